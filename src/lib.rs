//! tribe: the analytical core of a customer data platform. Events and records are ingested into
//! Delta Lake tables on object storage and queried with DataFusion.
//!
//! Modules follow the pipeline: `config` and `workspace` (where things are), `storage` (tables
//! and commits), `ingest` (events and records in), `identity`
//! (unified profiles), `segment` (the segment language), `traits` (computed traits), `export` and
//! `schedule` (activation), `serve` (collector and SQL endpoint), `sql` and `output` (queries out), `privacy` (consent, access and
//! erasure), `maintain` (compaction and
//! clean-up), `demo` (generated workspaces).

pub mod config;
pub mod demo;
pub mod error;
pub mod export;
pub mod identity;
pub mod ingest;
pub mod maintain;
pub mod output;
pub mod privacy;
pub mod schedule;
pub mod segment;
pub mod serve;
pub mod sql;
pub mod storage;
pub mod traits;
pub mod workspace;

pub use error::{Error, Result};
pub use workspace::Workspace;
