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

/// Tunes glibc's allocator for tribe's pattern: every few milliseconds a thread builds and drops
/// batch buffers of several megabytes. By default glibc serves those with fresh `mmap`s and
/// returns them at once, so each batch pays page faults and kernel page zeroing: a fifth of an
/// events ingest's CPU went to the kernel. Keeping up to 1 GiB of freed heap cut that time
/// (10.5M events: system time 12.6 s down to 3.4 s, wall time 36.9 s down to 31.5 s). Call it
/// first thing in `main`, before other threads start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A crash-test seam: with `TRIBE_TEST_PAUSE_AT=<step>` the process stops at that step (and
/// says so on stderr) so that a test can kill it there. Exports and erasures use it.
pub(crate) fn pause_point(step: &str) {
    if std::env::var("TRIBE_TEST_PAUSE_AT").is_ok_and(|s| s == step) {
        eprintln!("paused at {step}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}
pub use workspace::Workspace;
