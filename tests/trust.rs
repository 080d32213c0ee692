//! Trust boundaries: what one identity cached is never served to another (docs/SEMANTICS.md,
//! "Trust model"), with two access keys on the test server: A may read `team-a/` only, B both.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::*;

const SHARED: &str = "shared-cache";

/// A mount like `Mount::new`, signed with `access_key`.
fn mount_as(s: &TestServer, access_key: &str, extra: &[&str]) -> Mount {
    Mount::new_with_env(s, BUCKET, extra, &[("AWS_ACCESS_KEY_ID", access_key)])
}

fn two_teams(s: &TestServer) -> (Vec<u8>, Vec<u8>) {
    let (a, b, _) = two_teams_etag(s);
    (a, b)
}

/// team-a/x and team-b/x (3 MiB each), A restricted to team-a/; also team-b/x's ETag.
fn two_teams_etag(s: &TestServer) -> (Vec<u8>, Vec<u8>, String) {
    let a = data(3 << 20, 1);
    let b = data(3 << 20, 2);
    s.put(BUCKET, "team-a/x", a.clone());
    let etag = s.put(BUCKET, "team-b/x", b.clone());
    s.restrict("AKIDTEAMA", BUCKET, &["team-a/"]);
    (a, b, etag)
}

/// Where the shared tier keeps block `index` of team-b/x for a mount of `partition`.
fn shared_block_key(s: &TestServer, partition: &str, etag: &str, index: u64) -> String {
    let source = s3cachefs::object::SourceId::new(Some(&s.endpoint()), BUCKET, partition);
    let (hash, _) = s3cachefs::blockfmt::object_hash(&source, "team-b/x", etag, 1 << 20);
    format!("s3cachefs/v1/blocks/{hash}/{index}")
}

fn denied<T: std::fmt::Debug>(r: std::io::Result<T>) -> bool {
    matches!(&r, Err(e) if e.kind() == ErrorKind::PermissionDenied)
}

/// Checks that mount `a` (as A) cannot read team-b/x, list team-b/, or stat it, although B
/// cached all of it in the same cache; and that it reads its own team's file.
fn a_is_denied_team_b(s: &TestServer, a: &Mount, team_a: &[u8]) {
    s.reset_counts();
    assert!(denied(fs::read(a.join("team-b/x"))), "A read team-b/x");
    assert!(denied(fs::read_dir(a.join("team-b"))), "A listed team-b/");
    assert!(denied(fs::metadata(a.join("team-b/x"))), "A saw team-b/x");
    assert_eq!(s.counts().get, 0, "nothing of team-b was fetched for A");
    assert!(fs::read(a.join("team-a/x")).unwrap() == team_a);
}

#[test]
fn a_cache_filled_by_one_identity_is_never_served_to_another() {
    let s = server();
    let (team_a, team_b) = two_teams(&s);
    s.set_identity("AKIDTEAMA", "arn:aws:sts::111111111111:assumed-role/team-a/pod-1");
    s.set_identity("AKIDTEAMB", "arn:aws:sts::111111111111:assumed-role/team-b/pod-1");
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let args = ["--cache", c, "--metadata-ttl", "indefinite"];
    {
        let b = mount_as(&s, "AKIDTEAMB", &args);
        assert!(fs::read(b.join("team-b/x")).unwrap() == team_b);
        assert_eq!(fs::read_dir(b.join("team-b")).unwrap().count(), 1);
        assert!(fs::read(b.join("team-a/x")).unwrap() == team_a);
    }
    // A second mount of B, another session of the same role: everything from the cache.
    s.set_identity("AKIDTEAMB2", "arn:aws:sts::111111111111:assumed-role/team-b/pod-2");
    {
        s.reset_counts();
        let b2 = mount_as(&s, "AKIDTEAMB2", &args);
        s.reset_counts();
        assert!(fs::read(b2.join("team-b/x")).unwrap() == team_b);
        assert_eq!(fs::read_dir(b2.join("team-b")).unwrap().count(), 1);
        let c = s.counts();
        assert_eq!(
            (c.get, c.list, c.head),
            (0, 0, 0),
            "the same identity shares the cache: {c:?}"
        );
    }
    let a = mount_as(&s, "AKIDTEAMA", &args);
    a_is_denied_team_b(&s, &a, &team_a);
}

#[test]
fn without_sts_each_set_of_credentials_has_its_own_partition() {
    let s = server();
    s.set_sts(false);
    let (team_a, team_b) = two_teams(&s);
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let args = ["--cache", c, "--metadata-ttl", "indefinite"];
    {
        let b = mount_as(&s, "AKIDTEAMB", &args);
        assert!(fs::read(b.join("team-b/x")).unwrap() == team_b);
        assert_eq!(fs::read_dir(b.join("team-b")).unwrap().count(), 1);
    }
    {
        let b = mount_as(&s, "AKIDTEAMB", &args);
        s.reset_counts();
        assert!(fs::read(b.join("team-b/x")).unwrap() == team_b);
        let c = s.counts();
        assert_eq!((c.get, c.list, c.head), (0, 0, 0), "the same credentials share: {c:?}");
    }
    let a = mount_as(&s, "AKIDTEAMA", &args);
    a_is_denied_team_b(&s, &a, &team_a);
    drop(a);
    // A label shares between credentials: the administrator says they are one identity.
    let label = [
        "--cache",
        c,
        "--metadata-ttl",
        "indefinite",
        "--cache-partition",
        "team-b",
    ];
    {
        let b = mount_as(&s, "AKIDTEAMB", &label);
        assert!(fs::read(b.join("team-b/x")).unwrap() == team_b);
    }
    let b3 = mount_as(&s, "AKIDTEAMB3", &label);
    s.reset_counts();
    assert!(fs::read(b3.join("team-b/x")).unwrap() == team_b);
    assert_eq!(s.counts().get, 0);
}

#[test]
fn the_shared_tier_is_partitioned_too() {
    let s = server();
    s.create_bucket(SHARED);
    let (team_a, team_b, etag) = two_teams_etag(&s);
    let url = format!("s3://{SHARED}/");
    let args = ["--shared-cache", url.as_str()];
    {
        let b = mount_as(&s, "AKIDTEAMB", &args);
        assert!(fs::read(b.join("team-b/x")).unwrap() == team_b);
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.keys(SHARED, "s3cachefs/v1/blocks/").len() < 3 {
            assert!(Instant::now() < deadline, "{:?}", s.keys(SHARED, ""));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    {
        // Another node of B: every block from the shared tier.
        let b = mount_as(&s, "AKIDTEAMB", &args);
        s.reset_counts();
        assert!(fs::read(b.join("team-b/x")).unwrap() == team_b);
        assert_eq!(s.counts_for(BUCKET).get, 0);
    }
    // B's blocks are named by B's partition: no other identity's mount ever asks for them.
    let shared = s.keys(SHARED, "s3cachefs/v1/blocks/");
    let of = |ak: &str| {
        let p = s3cachefs::app::identity::principal_partition(&s3cachefs_testserver::default_arn(ak));
        (0..3).map(|i| shared_block_key(&s, &p, &etag, i)).collect::<Vec<_>>()
    };
    let mut want = of("AKIDTEAMB");
    want.sort();
    assert_eq!(shared, want);
    assert!(of("AKIDTEAMA").iter().all(|k| !shared.contains(k)));
    let a = mount_as(&s, "AKIDTEAMA", &args);
    s.reset_counts();
    assert!(denied(fs::read(a.join("team-b/x"))), "A read team-b/x");
    assert_eq!(s.counts_for(BUCKET).get, 0);
    assert!(fs::read(a.join("team-a/x")).unwrap() == team_a);
}
