//! Segment benchmark (run with `cargo bench --bench segment`): every example segment of
//! `queries/` on a demo workspace of `TRIBE_BENCH_PEOPLE` people (default 100,000, about 70
//! events each), timed in tribe (DataFusion) and in DuckDB on the same Parquet files, in one
//! run. DuckDB runs the SQL tribe compiles for it (`--dialect duckdb`), reading the tables'
//! current files through their Delta logs (Python `duckdb` and `deltalake` from
//! `TRIBE_TEST_VENV`, which `.ci/run` installs).
//!
//! The workspace is compacted with `tribe maintain` after it is built, as a production workspace
//! would be. Reuses the workspace in `TRIBE_BENCH_DIR` when it holds a demo of that size.
//! Prints a Markdown table for the README.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use datafusion::prelude::SessionContext;
use tribe::segment::{Dialect, Segments, parse_as_of};
use tribe::workspace::Workspace;

mod common;

fn main() {
    tribe::tune_allocator();
    let people = common::env_number("TRIBE_BENCH_PEOPLE", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let as_of = parse_as_of(Some(tribe::demo::AS_OF)).unwrap();
    let (tribe_times, (duck_sql, by_key), events, dir) = runtime.block_on(async {
        let dir = common::demo_workspace("segment", people).await;
        // The repository's examples, as they are now (a kept workspace has older copies).
        for (name, text) in tribe::demo::EXAMPLE_SEGMENTS {
            std::fs::write(dir.join("queries").join(name), text).unwrap();
        }
        let ws = Workspace::open(&dir).unwrap();
        if !dir.join("data/traits/_delta_log").is_dir() {
            // Workspaces built before the demo computed traits.
            tribe::traits::compute::compute(&ws, as_of).await.unwrap();
        }
        // Warm runs, as in a session that runs many queries (the SQL endpoint, the shell):
        // footers and page indexes stay in memory, and each timing is the best of three runs.
        let segments = Segments::open_for_many_queries(&ws).await.unwrap();
        let events = count(&segments, "select count(*) from events").await;
        let by_key = tribe::sql::joins_on_route_keys(&segments.ctx)
            .await
            .unwrap();
        let mut times = BTreeMap::new();
        let mut duck = BTreeMap::new();
        // TRIBE_BENCH_SEGMENTS=a,b times only those segments (for profiling one of them).
        let only = std::env::var("TRIBE_BENCH_SEGMENTS").ok();
        let wanted = |name: &str| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|n| n == name))
        };
        for info in segments.list().into_iter().filter(|i| wanted(&i.name)) {
            let c = segments
                .compile(&info.name, as_of, Dialect::Datafusion)
                .unwrap();
            let session = segments.session_for(c.join_filters_prune);
            let (seconds, rows) = best_of_3(&session, &c.members().to_string()).await;
            eprintln!("{}: {rows} members, {seconds:.3} s in tribe", info.name);
            times.insert(info.name.clone(), (seconds, rows));
            let d = segments
                .compile(&info.name, as_of, Dialect::Duckdb)
                .unwrap();
            duck.insert(info.name.clone(), d.members().to_string());
        }
        (times, (duck, by_key), events, dir)
    });
    // TRIBE_BENCH_DUCKDB=0 times tribe alone (DuckDB's side needs its own memory and disk).
    let duck_times = if std::env::var("TRIBE_BENCH_DUCKDB").is_ok_and(|v| v == "0") {
        BTreeMap::new()
    } else {
        // DuckDB gets whichever view form is faster for it, per segment: its plans over the
        // key join are faster for most segments, but it spills tens of GB on some at 1M people.
        let mut best = duckdb(&dir, &duck_sql, false);
        if by_key {
            for (name, result) in duckdb(&dir, &duck_sql, true) {
                let better = match (&result, &best[&name]) {
                    (Ok(_), Err(_)) => true,
                    (Ok((a, _)), Ok((b, _))) => a < b,
                    _ => false,
                };
                if better {
                    best.insert(name, result);
                }
            }
        }
        best
    };

    println!(
        "{people} people, {events} events, as of {}\n",
        tribe::demo::AS_OF
    );
    println!("| segment | members | tribe | DuckDB |\n|---|---:|---:|---:|");
    let (mut total_t, mut total_d) = (0.0, 0.0);
    for (name, (seconds, rows)) in &tribe_times {
        total_t += seconds;
        let duck = match duck_times.get(name) {
            Some(Ok((d_seconds, d_rows))) => {
                assert_eq!(
                    rows, d_rows,
                    "{name}: tribe and DuckDB disagree on the member count"
                );
                total_d += d_seconds;
                format!("{d_seconds:.3} s")
            }
            Some(Err(e)) => format!("failed: {e}"),
            None => "not run".into(),
        };
        println!("| {name} | {rows} | {seconds:.3} s | {duck} |");
    }
    println!("| **suite** | | **{total_t:.2} s** | **{total_d:.2} s** |");
}

async fn best_of_3(session: &SessionContext, sql: &str) -> (f64, u64) {
    let mut best = f64::MAX;
    let mut rows = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    }
    (best, rows)
}

async fn count(segments: &Segments, sql: &str) -> u64 {
    let batches = segments
        .ctx
        .sql(sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let col = batches[0].column(0);
    arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(col).value(0) as u64
}

/// Best-of-3 seconds and row count of each query in DuckDB, or the error DuckDB gave.
type DuckResult = Result<(f64, u64), String>;

fn duckdb(
    dir: &Path,
    queries: &BTreeMap<String, String>,
    by_key: bool,
) -> BTreeMap<String, DuckResult> {
    let data = dir.join("data");
    let tables: BTreeMap<&str, String> = ["events", "profiles", "profile_routes", "traits"]
        .into_iter()
        .map(|t| (t, data.join(t).display().to_string()))
        .collect();
    let doc = serde_json::json!({
        "tables": tables,
        "views": {"profile_events": tribe::sql::portable_profile_events(by_key)},
        "queries": queries,
        "repeat": 3,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/duckdb_segments.py");
    let mut child = Command::new(common::venv_python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with duckdb: run .ci/run once");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let result: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    result
        .into_iter()
        .map(|(k, v)| {
            let result = match v["seconds"].as_f64() {
                Some(seconds) => Ok((seconds, v["rows"].as_u64().unwrap())),
                None => Err(v["error"].as_str().unwrap_or("no result").to_string()),
            };
            (k, result)
        })
        .collect()
}
