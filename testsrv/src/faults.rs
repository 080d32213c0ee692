//! Fault injection: the public [`FaultPlan`] / [`FaultRule`] / [`FaultKind`] types and the seeded, deterministic
//! dice ([`FaultState`]) that decide which request gets which fault.

use std::time::Duration;

use crate::stats::Op;

/// A set of fault rules plus the seed of the deterministic dice.
///
/// For every request the rules are tried in order; a rule is *eligible* when its `ops`, `bucket`, `key_contains`
/// and `max_count` allow the request, and every eligible rule rolls the dice (one draw from the seeded PRNG). The
/// first eligible rule whose roll is below its `probability` applies. With sequential requests the same plan and
/// seed therefore always faults the same requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    pub seed: u64,
    pub rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// An empty plan with the given seed.
    pub fn new(seed: u64) -> Self {
        FaultPlan {
            seed,
            rules: Vec::new(),
        }
    }

    /// Appends a rule (builder style).
    pub fn rule(mut self, rule: FaultRule) -> Self {
        self.rules.push(rule);
        self
    }
}

/// One fault rule of a [`FaultPlan`].
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// Operations the rule applies to; empty = all operations.
    pub ops: Vec<Op>,
    /// Probability in `0.0..=1.0` that an eligible request is faulted.
    pub probability: f64,
    pub kind: FaultKind,
    /// Stop injecting after this many faults from this rule.
    pub max_count: Option<u64>,
    /// Only requests whose object key contains this substring (requests without a key never match).
    pub key_contains: Option<String>,
    /// Only requests to this bucket (e.g. break a cache bucket while the source bucket works).
    pub bucket: Option<String>,
}

impl FaultRule {
    /// A rule for all ops with probability 1, no limit and no key filter.
    pub fn new(kind: FaultKind) -> Self {
        FaultRule {
            ops: Vec::new(),
            probability: 1.0,
            kind,
            max_count: None,
            key_contains: None,
            bucket: None,
        }
    }

    /// Restricts the rule to these ops.
    pub fn ops(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.ops = ops.into_iter().collect();
        self
    }

    /// Sets the probability.
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p;
        self
    }

    /// Sets the maximum number of injections.
    pub fn max_count(mut self, n: u64) -> Self {
        self.max_count = Some(n);
        self
    }

    /// Restricts the rule to keys containing `s`.
    pub fn key_contains(mut self, s: impl Into<String>) -> Self {
        self.key_contains = Some(s.into());
        self
    }

    /// Restricts the rule to requests to `bucket`.
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = Some(bucket.into());
        self
    }

    fn eligible(&self, op: Op, bucket: &str, key: Option<&str>, injected: u64) -> bool {
        (self.ops.is_empty() || self.ops.contains(&op))
            && self.max_count.is_none_or(|m| injected < m)
            && self.bucket.as_deref().is_none_or(|b| b == bucket)
            && match &self.key_contains {
                None => true,
                Some(s) => key.is_some_and(|k| k.contains(s.as_str())),
            }
    }
}

/// What an injected fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer 500 InternalError (XML body; empty for HEAD) instead of processing the request.
    Status500,
    /// Answer 503 SlowDown (XML body; empty for HEAD) instead of processing the request.
    SlowDown,
    /// Answer 409 ConditionalRequestConflict (XML body; empty for HEAD) instead of processing the request, as
    /// S3 answers a conditional write that raced another write or a delete of the same key. A retry resolves it.
    ConditionalConflict,
    /// Send the head with the full Content-Length, half of the body, then reset the TCP connection (RST).
    /// For a response without body bytes (HEAD, empty object) the connection is reset before any response.
    ResetMidBody,
    /// Send the head with the full Content-Length, half of the body, then close the connection cleanly (FIN).
    /// For a response without body bytes the connection is closed before any response.
    ShortBody,
    /// Sleep this long (after the configured latency) before processing and responding.
    Stall(Duration),
    /// Stream the response body at this rate (overrides the bandwidth setting). No effect on bodiless responses.
    Trickle { bytes_per_sec: u64 },
}

/// SplitMix64: a tiny, good-quality, seedable PRNG.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The active plan with its per-rule injection counters and PRNG state.
pub(crate) struct FaultState {
    rules: Vec<(FaultRule, u64)>,
    rng: SplitMix64,
}

impl FaultState {
    pub(crate) fn new(plan: FaultPlan) -> Self {
        FaultState {
            rng: SplitMix64::new(plan.seed),
            rules: plan.rules.into_iter().map(|r| (r, 0)).collect(),
        }
    }

    /// Decides the fault (if any) for one request.
    pub(crate) fn roll(&mut self, op: Op, bucket: &str, key: Option<&str>) -> Option<FaultKind> {
        for (rule, injected) in &mut self.rules {
            if !rule.eligible(op, bucket, key, *injected) {
                continue;
            }
            if self.rng.next_f64() < rule.probability {
                *injected += 1;
                return Some(rule.kind.clone());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_limited() {
        let plan = FaultPlan::new(42).rule(FaultRule::new(FaultKind::Status500).probability(0.5).max_count(10));
        let run = || {
            let mut st = FaultState::new(plan.clone());
            (0..100)
                .map(|_| st.roll(Op::Get, "b", Some("k")).is_some())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert_eq!(a.iter().filter(|b| **b).count(), 10);
    }

    #[test]
    fn filters() {
        let plan = FaultPlan::new(1).rule(FaultRule::new(FaultKind::SlowDown).ops([Op::Head]).key_contains("x"));
        let mut st = FaultState::new(plan);
        assert_eq!(st.roll(Op::Get, "b", Some("x")), None);
        assert_eq!(st.roll(Op::Head, "b", Some("y")), None);
        assert_eq!(st.roll(Op::Head, "b", None), None);
        assert_eq!(st.roll(Op::Head, "b", Some("axb")), Some(FaultKind::SlowDown));

        let plan = FaultPlan::new(1).rule(FaultRule::new(FaultKind::ConditionalConflict).bucket("cache"));
        let mut st = FaultState::new(plan);
        assert_eq!(st.roll(Op::Put, "source", Some("k")), None);
        assert_eq!(st.roll(Op::Put, "cache2", Some("k")), None);
        assert_eq!(st.roll(Op::Put, "cach", Some("k")), None);
        assert_eq!(
            st.roll(Op::Put, "cache", Some("k")),
            Some(FaultKind::ConditionalConflict)
        );
        assert_eq!(
            st.roll(Op::HeadBucket, "cache", None),
            Some(FaultKind::ConditionalConflict)
        );
    }
}
