//! Erasure at scale: `tribe privacy forget` of single people in a workspace of
//! `TRIBE_BENCH_PEOPLE` people (default 1,000,000) with about 100 events each over 365 days
//! (100M events, one file per day as after `tribe maintain`), plus the identity tables a
//! resolve would have written. The workspace is generated directly as tables (a demo of that
//! size would need ~30 GB of JSON sources); `TRIBE_BENCH_DIR` keeps it between runs.
//!
//! People are active on a few days each (a geometric number, mean ~7) with 5-20 events per
//! active day; the benchmark forgets a light, a typical and a heavy person and reports, for
//! each, the time, the rows deleted and the files rewritten. Run with
//! `cargo bench --bench privacy`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use tribe::identity::profiles::Profile;
use tribe::identity::tables;
use tribe::ingest::batch::EventBatchBuilder;
use tribe::ingest::message::{EventRow, MessageType};
use tribe::storage::{WriteMode, schema};
use tribe::workspace::Workspace;

mod common;

const DAYS: i64 = 365;
const START: i64 = 1_735_689_600_000_000; // 2025-01-01T00:00:00Z in microseconds

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The active days of person `i`, sorted.
fn days_of(i: u64) -> Vec<i64> {
    let mut n = 1;
    while n < 60 && !mix(i * 131 + n).is_multiple_of(7) {
        n += 1;
    }
    let mut days: Vec<i64> = (0..n)
        .map(|k| (mix(i * 7919 + k * 104_729) % DAYS as u64) as i64)
        .collect();
    days.sort_unstable();
    days.dedup();
    days
}

fn events_on(i: u64, day: i64) -> u64 {
    5 + mix(i ^ (day as u64) << 20) % 16
}

fn user(i: u64) -> String {
    format!("u{i:08}")
}
fn anon(i: u64, day: i64) -> String {
    // Two devices per person.
    format!("a-{i:08}-{}", mix(i + day as u64) % 2)
}
fn email(i: u64) -> String {
    format!("person{i}@example.com")
}

async fn build(dir: &Path, people: u64) -> Workspace {
    let ws = Workspace::init(dir, tribe::config::Config::default()).unwrap();
    let started = Instant::now();
    // (day, person) for every active day.
    let mut by_day: Vec<Vec<u32>> = vec![Vec::new(); DAYS as usize];
    for i in 0..people {
        for d in days_of(i) {
            by_day[d as usize].push(i as u32);
        }
    }
    let spec = schema::events(&ws.config);
    let typed: Vec<(String, tribe::config::ValueType)> =
        schema::typed_properties(&ws.config).into_iter().collect();
    let names = [
        "Page Viewed",
        "Product Viewed",
        "Product Added",
        "Order Completed",
    ];
    let mut total = 0u64;
    for (day, persons) in by_day.iter().enumerate() {
        let day = day as i64;
        let mut builder = EventBatchBuilder::new(spec.schema.clone(), &typed);
        for &i in persons {
            let i = i as u64;
            let (u, a) = (user(i), anon(i, day));
            for k in 0..events_on(i, day) {
                let ts = START + day * 86_400_000_000 + ((mix(i + k) % 86_000) as i64) * 1_000_000;
                let name = names[(mix(i * 31 + k) % 4) as usize];
                let message_id = format!("m-{i}-{day}-{k}");
                let props = format!(
                    r#"{{"path":"/p/{}","revenue":{}}}"#,
                    k,
                    (i % 97) as f64 + 0.5
                );
                let row = EventRow {
                    message_id: message_id.as_str().into(),
                    kind: MessageType::Track,
                    event: Some(name.into()),
                    name: None,
                    user_id: Some(u.as_str().into()),
                    anonymous_id: Some(a.as_str().into()),
                    previous_id: None,
                    group_id: None,
                    timestamp: ts,
                    received_at: ts + 1_000_000,
                    sent_at: None,
                    properties: Some(props.as_str().into()),
                    traits: None,
                    context: Some(
                        r#"{"library":{"name":"analytics.js","version":"5.2.0"}}"#.into(),
                    ),
                    integrations: None,
                    typed: tribe::ingest::message::typed_values(Some(&props), &typed).unwrap(),
                };
                builder.push(&row, "web");
            }
        }
        total += builder.len() as u64;
        let batch = builder.finish();
        ws.storage
            .write(&spec, vec![batch.batch], WriteMode::Append)
            .await
            .unwrap();
        if day % 30 == 0 {
            eprintln!("day {day}: {total} events, {:.0?}", started.elapsed());
        }
    }
    let events_version = ws
        .storage
        .open(&spec)
        .await
        .unwrap()
        .unwrap()
        .version()
        .unwrap();
    eprintln!("{total} events written in {:.0?}", started.elapsed());

    // The identity tables a resolve would have written.
    let pid = |i: u64| format!("p_{:016x}", mix(i));
    let mut profiles = Vec::with_capacity(people as usize);
    let (mut ids, mut keys): (Vec<[String; 3]>, Vec<[String; 3]>) = (Vec::new(), Vec::new());
    let mut routes: Vec<[String; 3]> = Vec::new();
    let mut seen: Vec<(i64, i64)> = Vec::new();
    for i in 0..people {
        let days = days_of(i);
        let first = START + days[0] * 86_400_000_000;
        let last = START + (days[days.len() - 1] + 1) * 86_400_000_000 - 1;
        let events: u64 = days.iter().map(|d| events_on(i, *d)).sum();
        let p = pid(i);
        profiles.push(Profile {
            id: p.clone(),
            is_known: true,
            user_id: Some(user(i)),
            email: Some(email(i)),
            phone: None,
            identifiers: 4,
            first_seen: first,
            last_seen: last,
            events: events as i64,
            sources: "web".to_string(),
            consent: BTreeMap::new(),
            traits: BTreeMap::new(),
        });
        ids.push(["user_id".into(), user(i), p.clone()]);
        ids.push(["email".into(), email(i), p.clone()]);
        keys.push(["user_id".into(), user(i), p.clone()]);
        for device in 0..2 {
            let a = format!("a-{i:08}-{device}");
            ids.push(["anonymous_id".into(), a.clone(), p.clone()]);
            keys.push(["anonymous_id".into(), a.clone(), p.clone()]);
            routes.push([user(i), a, p.clone()]);
        }
        seen.push((first, last));
    }
    let col =
        |rows: &[[String; 3]], k: usize| tables::strings(rows.iter().map(|r| Some(r[k].as_str())));
    let ids_spec = tables::identities();
    let times: Vec<i64> = ids.iter().map(|_| START).collect();
    let identities = tables::rows(
        &ids_spec,
        vec![
            col(&ids, 0),
            col(&ids, 1),
            col(&ids, 2),
            tables::times(times.iter().map(|t| Some(*t))).unwrap(),
            tables::times(times.iter().map(|t| Some(*t))).unwrap(),
            tables::strings(ids.iter().map(|_| Some("web"))),
        ],
    )
    .unwrap();
    ws.storage
        .write(&ids_spec, vec![identities], WriteMode::Replace)
        .await
        .unwrap();
    let keys: Vec<tables::Key> = keys
        .iter()
        .map(|[ty, key, p]| (ty.as_str(), key.as_str(), p.as_str()))
        .collect();
    let routes: Vec<tables::Route> = routes
        .iter()
        .map(|[u, a, p]| (Some(u.as_str()), Some(a.as_str()), None, p.as_str()))
        .collect();
    for (spec, batch) in [
        (tables::profile_keys(), tables::profile_keys_batch(&keys)),
        (
            tables::profile_routes(),
            tables::profile_routes_batch(&routes),
        ),
    ] {
        ws.storage
            .write(&spec, vec![batch.unwrap()], WriteMode::Replace)
            .await
            .unwrap();
    }
    let (profiles_spec, batch) = tables::profiles_batch(&profiles, &[], &[]).unwrap();
    ws.storage
        .write(&profiles_spec, vec![batch], WriteMode::Replace)
        .await
        .unwrap();
    let versions = serde_json::json!({ "events": events_version }).to_string();
    let run = tables::rows(
        &tables::runs(),
        vec![
            tables::strings([Some("bench")]),
            tables::strings([Some("full")]),
            tables::times([Some(START)]).unwrap(),
            tables::times([Some(START)]).unwrap(),
            tables::strings([Some(versions.as_str())]),
            tables::longs([0]),
            tables::longs([0]),
            tables::longs([0]),
            tables::longs([people as i64]),
            tables::longs([0]),
            tables::longs([0]),
            tables::longs([0]),
            tables::strings([Some("[]")]),
        ],
    )
    .unwrap();
    ws.storage
        .write(&tables::runs(), vec![run], WriteMode::Append)
        .await
        .unwrap();
    eprintln!("workspace built in {:.0?}", started.elapsed());
    ws
}

fn main() {
    tribe::tune_allocator();
    let people = common::env_number("TRIBE_BENCH_PEOPLE", 1_000_000);
    let dir = common::bench_root("privacy").join(format!("privacy-{people}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ws = if dir.join("tribe.toml").is_file() {
            Workspace::open(&dir).unwrap()
        } else {
            build(&dir, people).await
        };
        // A light (1 active day), a typical and a heavy person, not forgotten by earlier runs.
        let forgotten = tribe::identity::query_table(
            &ws,
            &tribe::storage::TableSpec::existing("privacy_log", "privacy_log"),
            "select count(*) from t where action = 'forget' and outcome = 'completed'",
        )
        .await
        .unwrap();
        let offset = forgotten
            .first()
            .and_then(|r| r[0].parse::<u64>().ok())
            .unwrap_or(0);
        let pick = |want: &dyn Fn(usize) -> bool| {
            (offset * 1000..people)
                .find(|i| want(days_of(*i).len()))
                .expect("such a person exists")
        };
        let chosen = [
            ("light (1 active day)", pick(&|n| n == 1)),
            ("typical (7 active days)", pick(&|n| n == 7)),
            ("heavy (20+ active days)", pick(&|n| n >= 20)),
        ];
        println!("| person | events | days | forget (s) | rows deleted | files rewritten | old files removed |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (label, i) in chosen {
            let days = days_of(i);
            let events: u64 = days.iter().map(|d| events_on(i, *d)).sum();
            let t = Instant::now();
            let report = tribe::privacy::forget::forget(&ws, &email(i), Some("benchmark"))
                .await
                .unwrap();
            let seconds = t.elapsed().as_secs_f64();
            let events_table = report.tables.iter().find(|t| t.table == "events").unwrap();
            eprintln!("{label}: phases {:?}", report.phases);
            for t in &report.tables {
                eprintln!("  {}: {} rows, {} files, {:.2} s", t.table, t.rows_deleted, t.files_rewritten, t.seconds);
            }
            println!(
                "| {label} | {events} | {} | {seconds:.2} | {} | {} | {} |",
                days.len(),
                report.rows_deleted,
                events_table.files_rewritten,
                events_table.old_files_removed
            );
            assert_eq!(events_table.rows_deleted, events, "every event of the person");
        }
    });
}
