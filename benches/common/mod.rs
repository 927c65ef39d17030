//! Helpers shared by the whole-pipeline benchmarks.

use std::time::Instant;

/// A number from the environment variable `name`, else `default`.
#[allow(dead_code)]
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where benchmark `bench` keeps its workspaces: `TRIBE_BENCH_DIR`, else a folder in the temp
/// dir named after it.
#[allow(dead_code)]
pub fn bench_root(bench: &str) -> std::path::PathBuf {
    std::env::var("TRIBE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join(format!("tribe-bench-{bench}")))
}

/// The Python of the test tools' virtualenv (`TRIBE_TEST_VENV`, else `~/.cache/tribe/venv`,
/// which `.ci/run` fills with DuckDB and deltalake).
#[allow(dead_code)]
pub fn venv_python() -> std::path::PathBuf {
    std::env::var("TRIBE_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/tribe/venv")
        })
        .join("bin/python")
}

/// Seconds of the best of three runs of a query (warm).
#[allow(dead_code)]
pub async fn time_query(ctx: &datafusion::prelude::SessionContext, q: &str) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        ctx.sql(q).await.unwrap().collect().await.unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// The demo workspace of `people` people under `TRIBE_BENCH_DIR` (default a folder in the
/// temp dir named after `bench`), built, resolved and compacted with `tribe maintain` (as a
/// production workspace would be) when it is not there yet.
#[allow(dead_code)]
pub async fn demo_workspace(bench: &str, people: u64) -> std::path::PathBuf {
    let dir = bench_root(bench).join(format!("demo-{people}"));
    if !dir.join("tribe.toml").is_file() {
        let options = tribe::demo::DemoOptions {
            people,
            days: 365,
            seed: 42,
            keep_sources: false,
            resolve: true,
        };
        let t = Instant::now();
        tribe::demo::build(&dir, &options, &indicatif::ProgressBar::hidden())
            .await
            .unwrap();
        eprintln!("built demo of {people} people in {:.0?}", t.elapsed());
        // Compacted, both engines read one file per day instead of one per ingest and day.
        let ws = tribe::workspace::Workspace::open(&dir).unwrap();
        let options = tribe::maintain::MaintainOptions::default();
        tribe::maintain::maintain(&ws, &options).await.unwrap();
    }
    dir
}
