//! Whole-pipeline ingest benchmark (run with `cargo bench --bench ingest`).
//!
//! 1. Generates demo sources (Segment JSON lines from web, app and e-mail) of about
//!    `TRIBE_BENCH_EVENTS` events (default 10M).
//! 2. Ingests the JSON lines into a fresh workspace: parse, check, dedupe, write Parquet, commit.
//! 3. Exports those events as Segment-shaped Parquet and ingests that into another workspace.
//! 4. Times aggregating a property both ways it is stored (typed `prop_revenue` column vs JSON
//!    text in `properties`), in tribe and in DuckDB on the same Parquet files.
//!
//! Prints a Markdown table for the README.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use indicatif::ProgressBar;
use tribe::demo::{DemoOptions, DemoReport, write_sources};
use tribe::ingest::events::{EventIngest, ingest_events};
use tribe::workspace::Workspace;

fn main() {
    tribe::tune_allocator();
    let target = common::env_number("TRIBE_BENCH_EVENTS", 10_000_000);
    let root = common::bench_root("ingest");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let quiet = ProgressBar::hidden();

    // Calibrate people per event on a small sample, then generate the real thing.
    let sample = count_events(&root.join("sample"), 500);
    let people = (target as f64 / (sample as f64 / 500.0)).ceil() as u64;
    let sources = root.join("sources");
    let t = Instant::now();
    let mut report = DemoReport::default();
    let options = DemoOptions {
        people,
        days: 365,
        seed: 7,
        keep_sources: true,
        resolve: false,
    };
    write_sources(&sources, &root, &options, 0..people, &quiet, &mut report).unwrap();
    let generated = report.web_events + report.app_events + report.email_events;
    let files: Vec<PathBuf> = ["web.jsonl", "app.jsonl", "email.jsonl"]
        .iter()
        .map(|f| sources.join(f))
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    // The generator's writes are flushed first, so that their write-back does not compete
    // with the ingest being timed.
    for f in &files {
        std::fs::File::open(f).unwrap().sync_all().unwrap();
    }
    eprintln!(
        "generated {generated} events ({:.1} GB) for {people} people in {:.1?}",
        bytes as f64 / 1e9,
        t.elapsed()
    );

    // JSON lines → events.
    let ws = new_workspace(&root.join("ws-json"));
    let t = Instant::now();
    let r = runtime
        .block_on(ingest_events(&ws, &files, &EventIngest::default(), &quiet))
        .unwrap();
    let json_secs = t.elapsed().as_secs_f64();
    assert_eq!(r.inserted, generated);

    // Segment-shaped Parquet of the same events → events of a second workspace.
    let parquet_dir = root.join("parquet-input");
    std::fs::create_dir_all(&parquet_dir).unwrap();
    let parquet_file = parquet_dir.join("events.parquet");
    runtime.block_on(async {
        let (ctx, _) = tribe::sql::session(&ws).await.unwrap();
        let q = format!(
            "copy (select message_id as \"messageId\", type, event, name, user_id as \"userId\", \
             anonymous_id as \"anonymousId\", timestamp, properties, traits, context from events) \
             to '{}' stored as parquet",
            parquet_file.display()
        );
        ctx.sql(&q).await.unwrap().collect().await.unwrap();
    });
    let ws2 = new_workspace(&root.join("ws-parquet"));
    let t = Instant::now();
    let r2 = runtime
        .block_on(ingest_events(
            &ws2,
            std::slice::from_ref(&parquet_file),
            &EventIngest::default(),
            &quiet,
        ))
        .unwrap();
    let parquet_secs = t.elapsed().as_secs_f64();
    assert_eq!(r2.inserted, generated);

    // Re-ingesting the same JSON lines: everything is a duplicate.
    let t = Instant::now();
    let r3 = runtime
        .block_on(ingest_events(
            &ws,
            &files[2..],
            &EventIngest::default(),
            &quiet,
        ))
        .unwrap();
    let dedupe_secs = t.elapsed().as_secs_f64();
    assert_eq!(r3.inserted, 0);

    // Property representation: typed column vs JSON text.
    let typed_q = "select sum(prop_revenue) from events where event = 'Order Completed'";
    let json_q = "select sum(json_get_float(properties, 'revenue')) from events where event = 'Order Completed'";
    let (typed_secs, json_prop_secs) = runtime.block_on(async {
        let (ctx, _) = tribe::sql::session(&ws).await.unwrap();
        (
            common::time_query(&ctx, typed_q).await,
            common::time_query(&ctx, json_q).await,
        )
    });
    let events_glob = format!("{}/events/**/*.parquet", ws.storage.root().path());
    let duck = duckdb_times(&events_glob);

    println!(
        "| ingest ({generated} events, {:.1} GB JSON) | seconds | events/s |",
        bytes as f64 / 1e9
    );
    println!("|---|---:|---:|");
    println!(
        "| JSON lines → events | {json_secs:.1} | {:.0} |",
        generated as f64 / json_secs
    );
    println!(
        "| Parquet → events | {parquet_secs:.1} | {:.0} |",
        generated as f64 / parquet_secs
    );
    println!(
        "| e-mail file again (all {} duplicates) | {dedupe_secs:.1} | {:.0} |",
        r3.duplicates,
        r3.duplicates as f64 / dedupe_secs
    );
    println!();
    println!(
        "| sum(revenue) of Order Completed over {generated} events | tribe (s) | DuckDB (s) |"
    );
    println!("|---|---:|---:|");
    println!(
        "| typed column `prop_revenue` | {typed_secs:.3} | {} |",
        fmt(duck.0)
    );
    println!(
        "| JSON text `properties` | {json_prop_secs:.3} | {} |",
        fmt(duck.1)
    );
    if std::env::var("TRIBE_BENCH_KEEP").is_err() {
        let _ = std::fs::remove_dir_all(&root);
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |s| format!("{s:.3}"))
}

fn count_events(dir: &Path, people: u64) -> u64 {
    let mut report = DemoReport::default();
    let options = DemoOptions {
        people,
        days: 365,
        seed: 7,
        keep_sources: true,
        resolve: false,
    };
    write_sources(
        &dir.join("sources"),
        dir,
        &options,
        0..people,
        &ProgressBar::hidden(),
        &mut report,
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    report.web_events + report.app_events + report.email_events
}

fn new_workspace(dir: &Path) -> Workspace {
    Workspace::init(dir, tribe::config::Config::default()).unwrap()
}

/// The same two aggregates in DuckDB on the same files, best of three; `None` without DuckDB.
fn duckdb_times(glob: &str) -> (Option<f64>, Option<f64>) {
    let script = format!(
        r#"
import duckdb, time
con = duckdb.connect()
con.execute("create view events as select * from read_parquet('{glob}', hive_partitioning=true)")
def best(q):
    b = 1e9
    for _ in range(3):
        t = time.time(); con.execute(q).fetchall(); b = min(b, time.time() - t)
    return b
print(best("select sum(prop_revenue) from events where event = 'Order Completed'"))
print(best("select sum(cast(json_extract(properties, '$.revenue') as double)) from events where event = 'Order Completed'"))
"#
    );
    let out = Command::new(common::venv_python())
        .args(["-c", &script])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let mut lines = text.lines().map(|l| l.trim().parse::<f64>().ok());
            (lines.next().flatten(), lines.next().flatten())
        }
        _ => (None, None),
    }
}
