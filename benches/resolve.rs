//! Identity resolution benchmark (run with `cargo bench --bench resolve`).
//!
//! 1. Union-find core: components of a synthetic identity graph shaped like the demo's
//!    (per person a user id, an e-mail, sometimes a phone, one to three devices), with limits.
//! 2. Whole pipeline on a demo workspace of `TRIBE_BENCH_PEOPLE` people (default 100,000):
//!    a cold full resolve, an incremental one with nothing new, incremental ones after about
//!    1% new events (from a few people, and spread over everyone), then queries through the
//!    `profile_events` view against the same query on `events`.
//!
//! Reuses the workspace in `TRIBE_BENCH_DIR` when it holds a demo of that size.
//! Prints a Markdown table for the README.

mod common;

use std::io::{BufRead, Write};
use std::time::Instant;

use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use tribe::identity::unionfind::{Link, components};
use tribe::workspace::Workspace;

fn main() {
    tribe::tune_allocator();
    let people: u64 = common::env_number("TRIBE_BENCH_PEOPLE", 100_000);
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. The core.
    let core_people = common::env_number("TRIBE_BENCH_CORE_PEOPLE", 1_000_000);
    let (types, mut links) = synthetic(core_people);
    let t = Instant::now();
    links.sort_unstable();
    let sort = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let c = components(&types, &links, &[(0, 1), (1, 5)]);
    let core = t.elapsed().as_secs_f64();
    assert!(c.refused.len() < links.len());
    rows.push((
        format!(
            "union-find core, {} nodes, {} links",
            types.len(),
            links.len()
        ),
        format!(
            "{core:.2} s = {:.1}M links/s (sorting the links: {sort:.2} s)",
            links.len() as f64 / core / 1e6
        ),
    ));

    // 2. The pipeline.
    let dir = common::bench_root("resolve").join(format!("demo-{people}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if !dir.join("tribe.toml").is_file() {
            let options = tribe::demo::DemoOptions { people, days: 365, seed: 42, keep_sources: true, resolve: false };
            let t = Instant::now();
            tribe::demo::build(&dir, &options, &ProgressBar::hidden()).await.unwrap();
            eprintln!("built demo of {people} people in {:.0?}", t.elapsed());
        }
        let ws = Workspace::open(&dir).unwrap();
        let (ctx, _) = tribe::sql::session(&ws).await.unwrap();
        let events = count(&ctx, "select count(*) from events").await;

        let t = Instant::now();
        let full = tribe::identity::resolve(&ws, tribe::identity::Options { full: true }).await.unwrap();
        let full_s = t.elapsed().as_secs_f64();
        rows.push((
            format!("full resolve, {people} people, {events} events (cold)"),
            format!("{full_s:.1} s: {} sightings, {} identifiers, {} profiles", full.sightings, full.identifiers, full.profiles),
        ));

        let t = Instant::now();
        let idle = tribe::identity::resolve(&ws, tribe::identity::Options::default()).await.unwrap();
        rows.push((
            "incremental resolve, nothing new".into(),
            format!("{:.1} s ({})", t.elapsed().as_secs_f64(), idle.mode),
        ));

        // About 1% new events, twice: a day's activity of some people (a sixteenth of the
        // devices, three of each sixteen of their web events), then the same share spread over
        // everyone (every 100th web event). Each is sent again under a new message id.
        let web = dir.join("sources/web.jsonl");
        let some_people = |i: usize, line: &str| {
            let device = line.split("\"anonymousId\":\"").nth(1).and_then(|r| r.split('"').next());
            device.is_some_and(|d| xxhash_rust::xxh3::xxh3_64(d.as_bytes()).is_multiple_of(16)) && i % 16 < 3
        };
        let everyone = |i: usize, _: &str| i.is_multiple_of(100);
        // New message ids per run: a kept workspace would otherwise drop them as duplicates.
        let tag = chrono::Utc::now().timestamp();
        for (name, pick) in [
            ("a day of activity of 1 in 16 devices", &some_people as &dyn Fn(usize, &str) -> bool),
            ("spread over everyone", &everyone),
        ] {
            let extra = dir.join("extra.jsonl");
            let mut out = std::io::BufWriter::new(std::fs::File::create(&extra).unwrap());
            let input = std::io::BufReader::new(std::fs::File::open(&web).unwrap());
            let mut added = 0u64;
            for (i, line) in input.lines().enumerate() {
                let line = line.unwrap();
                if pick(i, &line) {
                    writeln!(out, "{}", line.replacen("\"messageId\":\"", &format!("\"messageId\":\"again-{tag}-{name}-"), 1)).unwrap();
                    added += 1;
                }
            }
            out.flush().unwrap();
            drop(out);
            let options = tribe::ingest::events::EventIngest { source: Some("web".into()), strict: false };
            tribe::ingest::events::ingest_events(&ws, std::slice::from_ref(&extra), &options, &ProgressBar::hidden()).await.unwrap();
            let t = Instant::now();
            let inc = tribe::identity::resolve(&ws, tribe::identity::Options::default()).await.unwrap();
            let inc_s = t.elapsed().as_secs_f64();
            assert_eq!(inc.mode, "incremental");
            rows.push((
                format!("incremental resolve after {added} new events ({:.1}%), {name}", added as f64 * 100.0 / events as f64),
                format!(
                    "{inc_s:.1} s: {} new sightings, {} of {} profiles recomputed",
                    inc.new_sightings, inc.recomputed_profiles, inc.profiles
                ),
            ));
        }

        let (ctx, _) = tribe::sql::session(&ws).await.unwrap();
        let q_events = "select user_id, sum(prop_revenue) from events where event = 'Order Completed' group by 1";
        let q_profiles = "select profile_id, sum(prop_revenue) from profile_events where event = 'Order Completed' group by 1";
        let a = common::time_query(&ctx, q_events).await;
        let b = common::time_query(&ctx, q_profiles).await;
        rows.push(("revenue per user id on `events`".into(), format!("{a:.2} s")));
        rows.push(("revenue per profile on `profile_events`".into(), format!("{b:.2} s")));
        let q_all = "select profile_id, count(*) from profile_events group by 1";
        rows.push(("events per profile, all events".into(), format!("{:.2} s", common::time_query(&ctx, q_all).await)));
    });

    println!("| measurement | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

async fn count(ctx: &datafusion::prelude::SessionContext, q: &str) -> i64 {
    let batches = ctx.sql(q).await.unwrap().collect().await.unwrap();
    let col =
        arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Int64).unwrap();
    col.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0)
}

/// A demo-shaped graph: node types 0 user id, 1 e-mail, 2 phone, 3 device; 1% of devices
/// shared with the next person.
fn synthetic(people: u64) -> (Vec<u16>, Vec<Link>) {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut types = Vec::new();
    let mut links = Vec::new();
    let mut last_device = None;
    for p in 0..people {
        let base = types.len() as u32;
        types.extend([0u16, 1]);
        let at = r.random_range(0..1_000_000i64);
        links.push(Link {
            rank: 1,
            at,
            a: base,
            b: base + 1,
        });
        if r.random_bool(0.6) {
            types.push(2);
            links.push(Link {
                rank: 2,
                at,
                a: base,
                b: types.len() as u32 - 1,
            });
        }
        // Every 100th person also uses the previous person's last device.
        if p % 100 == 1
            && let Some(d) = last_device
        {
            links.push(Link {
                rank: 3,
                at: at + 2,
                a: base,
                b: d,
            });
        }
        for _ in 0..r.random_range(1..=3) {
            types.push(3);
            let d = types.len() as u32 - 1;
            links.push(Link {
                rank: 3,
                at: at + 1,
                a: base,
                b: d,
            });
            last_device = Some(d);
        }
    }
    (types, links)
}
