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

/// Rust allocations go to jemalloc. Every few milliseconds a thread builds and drops batch
/// buffers of several megabytes, which glibc's allocator handed back to the kernel and faulted in
/// again, or kept as fragments: an events ingest spent up to a third of its CPU in the kernel
/// zeroing pages and grew to 4 GB. With jemalloc keeping freed pages for 30 s (and purging them
/// on a background thread) the same ingest of 10.5M events went from 37-42 s to 28-29 s.
/// (mimalloc, tried before, was slower here.)
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start (the `MALLOC_CONF` of a prefixed build).
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:30000,muzzy_decay_ms:30000\0";

/// Tunes glibc's allocator, which C libraries (zstd's contexts, for one) still use: freed heap up
/// to 1 GiB is kept rather than returned and faulted in again. Call it first thing in `main`,
/// before other threads start.
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
