//! Helpers of the end-to-end benchmark (`benches/e2e.rs`): the workload, the daemon guard,
//! system probes and the report.

pub mod daemon;
pub mod report;
pub mod sys;
pub mod workload;
