#!/usr/bin/env bash
# A warm-up + mount + metrics walk-through against the embedded S3-compatible server on loopback.
#
#   sudo examples/walkthrough.sh          (root, or fusermount3 from the fuse3 package, and /dev/fuse)
#
# It builds both binaries, seeds a bucket with JAR-like files, preloads them into a disk cache with
# `s3cachefs warm` (as EC2 user data would before kubelet starts), mounts the bucket on the same cache
# with a metrics endpoint, reads everything (zero GETs: the cache was warm), shows /metrics, /healthz
# and `s3cachefs stats`, then unmounts and cleans up. Change nothing; it uses only temporary paths.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin s3cachefs -p s3cachefs
cargo build --quiet --bin s3-testserver -p s3cachefs-testserver
bin=target/debug/s3cachefs

work=$(mktemp -d /tmp/s3cachefs-walkthrough.XXXXXX)
server_pid=""
cleanup() {
  if mountpoint -q "$work/mnt" 2>/dev/null; then umount "$work/mnt" || umount -l "$work/mnt"; fi
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== seeding 20 JAR-like files"
mkdir -p "$work/seed/jars/deps" "$work/mnt"
for i in $(seq -w 1 20); do
  head -c $((100000 + 10#$i * 150000)) /dev/urandom > "$work/seed/jars/deps/lib-$i.jar"
done
head -c 3000000 /dev/urandom > "$work/seed/jars/app.jar"

echo "== starting the embedded S3-compatible server (20 ms latency per request)"
target/debug/s3-testserver --seed-dir "$work/seed" --seed-bucket demo-bucket --latency-ms 20 > "$work/server.out" &
server_pid=$!
for _ in $(seq 100); do grep -q '^endpoint=' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
endpoint=$(sed -n 's/^endpoint=//p' "$work/server.out")
echo "   $endpoint"

# The test server accepts unsigned requests; real S3 takes credentials from the AWS chain instead.
s3=(--endpoint-url "$endpoint" --region us-east-1 --no-sign-request)

echo "== s3cachefs warm s3://demo-bucket/jars/ --cache $work/cache"
"$bin" warm s3://demo-bucket/jars/ --cache "$work/cache" --include '**/*.jar' "${s3[@]}"

echo "== mounting with the same cache and a metrics endpoint"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" mount demo-bucket "$work/mnt" --cache "$work/cache" --metadata-ttl indefinite \
  --metrics-addr "127.0.0.1:$port" "${s3[@]}"
echo "   mounted at $work/mnt (the command returned once the mount was live)"

echo "== reading every JAR through the mount"
find "$work/mnt" -type f | sort | while read -r f; do cmp -s "$f" "$work/seed/${f#"$work"/mnt/}" || { echo "DIFFERENT: $f"; exit 1; }; done
echo "   all bytes identical to the source"

echo "== GET /healthz"
curl -fsS "http://127.0.0.1:$port/healthz"

echo "== GET /metrics (selected lines)"
curl -fsS "http://127.0.0.1:$port/metrics" \
  | grep -E '^s3cachefs_(cache_hits|cache_misses|s3_requests|read_bytes|cache_size_bytes)' || true

echo "== s3cachefs stats"
"$bin" stats --metrics-addr "127.0.0.1:$port"

echo "== unmounting"
umount "$work/mnt"
echo "done"
