//! s3cachefs: a read-only S3 bucket as a POSIX tree, with cached metadata and data.
//!
//! Layers (see docs/ARCHITECTURE.md): `fuse` (kernel adapter) → `fs` (inodes, handles) →
//! `meta` (namespace cache) and `read` (block reads) → `store` (S3). `config` holds validated
//! settings, `cli` parses them, `app` wires everything together.

pub mod app;
pub mod blockfmt;
pub mod bufpool;
pub mod cache;
pub mod cachedir;
pub mod cli;
pub mod config;
pub mod fs;
pub mod fuse;
pub mod meta;
pub mod metrics;
pub mod object;
pub mod read;
pub mod store;
pub mod tier;
pub mod warnings;
