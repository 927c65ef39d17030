//! The segment language, tested three ways: golden segments over a small hand-made dataset
//! (`testdata/segments`) with the expected members of each; the same segments and the examples
//! of `queries/`, compiled for DuckDB and run there on the same Parquet files; and random
//! segment expressions that must compile and agree between tribe and DuckDB. Also the error
//! messages, `why`, `compile`, `explain` and `--save` through the real binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Backend, demo, ok, python, run, sql, sql_count, tribe, workspace};
use rand::{Rng, SeedableRng};
use tribe::segment::{Dialect, Segments, parse_as_of};

const GOLDEN: &str = include_str!("../testdata/segments/golden.seg");
const DEFAULT_AS_OF: &str = "2026-06-30";

/// A workspace with the golden dataset ingested and resolved, and golden.seg as its segments.
fn golden_workspace() -> tempfile::TempDir {
    let dir = workspace(
        Backend::Local,
        "[events.properties]\n\"product.sku\" = \"string\"\n\n[identity]\nconsent = { email = \"email_opt_in\" }\n",
    );
    let queries = dir.path().join("queries");
    std::fs::create_dir_all(&queries).unwrap();
    std::fs::write(queries.join("golden.seg"), GOLDEN).unwrap();
    let events = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/segments/events.jsonl");
    ok(tribe(dir.path()).args(["ingest", "events", events.to_str().unwrap()]));
    ok(tribe(dir.path()).arg("resolve"));
    dir
}

/// (segment, as-of, expected user ids) from the `# expect:` and `# as-of:` comments.
fn expectations() -> Vec<(String, String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let (mut expect, mut as_of) = (None, None);
    for line in GOLDEN.lines() {
        if let Some(e) = line.strip_prefix("# expect:") {
            expect = Some(
                e.split_whitespace()
                    .filter(|w| *w != "-")
                    .map(String::from)
                    .collect(),
            );
        } else if let Some(a) = line.strip_prefix("# as-of:") {
            as_of = Some(a.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("segment ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            let expected = expect
                .take()
                .unwrap_or_else(|| panic!("{name}: no # expect"));
            let at = as_of.take().unwrap_or_else(|| DEFAULT_AS_OF.to_string());
            out.push((name, at, expected));
        }
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Members of each (name, as-of) in tribe, and the SQL compiled for DuckDB with whether the
/// workspace's `profile_events` joins on route keys.
#[allow(clippy::type_complexity)]
fn run_in_tribe(
    dir: &Path,
    segments: &[(String, String)],
) -> (
    BTreeMap<String, Vec<String>>,
    (BTreeMap<String, String>, bool),
) {
    runtime().block_on(async {
        let ws = tribe::Workspace::open(dir).unwrap();
        let seg = Segments::open(&ws).await.unwrap();
        let (mut members, mut duck) = (BTreeMap::new(), BTreeMap::new());
        for (name, as_of) in segments {
            let at = parse_as_of(Some(as_of)).unwrap();
            let c = seg
                .compile(name, at, Dialect::Datafusion)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let batches = seg
                .members(&c)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let ids = sorted_ids(&batches);
            // The members query starts from what the condition cannot do without; the plain
            // form reads every profile. Both select the same people.
            let plain = c.members_from_profiles().to_string();
            let plain_ids =
                sorted_ids(&seg.ctx.sql(&plain).await.unwrap().collect().await.unwrap());
            assert_eq!(
                ids, plain_ids,
                "{name}: members differ from the plain form {plain}"
            );
            members.insert(name.clone(), ids);
            let d = seg.compile(name, at, Dialect::Duckdb).unwrap();
            duck.insert(name.clone(), d.members().to_string());
        }
        let by_key = tribe::sql::joins_on_route_keys(&seg.ctx).await.unwrap();
        (members, (duck, by_key))
    })
}

/// The first column of `batches` as sorted texts.
fn sorted_ids(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    let mut ids = Vec::new();
    for b in batches {
        let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let col = arrow::array::AsArray::as_string::<i32>(&col).clone();
        ids.extend(col.iter().flatten().map(String::from));
    }
    ids.sort();
    ids
}

/// Runs queries in DuckDB over the workspace's tables (read from their Delta logs).
fn run_in_duckdb(
    dir: &Path,
    (queries, by_key): &(BTreeMap<String, String>, bool),
) -> BTreeMap<String, Vec<String>> {
    let data = dir.join("data");
    let mut tables = serde_json::Map::new();
    for t in ["events", "profiles", "profile_routes", "traits"] {
        if data.join(t).join("_delta_log").exists() {
            tables.insert(t.into(), data.join(t).to_str().unwrap().into());
        }
    }
    let views =
        serde_json::json!({ "profile_events": tribe::sql::portable_profile_events(*by_key) });
    let doc = serde_json::json!({"tables": tables, "views": views, "queries": queries});
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/duckdb_segments.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    result
        .into_iter()
        .map(|(name, v)| {
            let ids = match v {
                serde_json::Value::Array(a) => a
                    .into_iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
                other => panic!("{name} failed in DuckDB: {other}\n{}", queries[&name]),
            };
            (name, ids)
        })
        .collect()
}

fn assert_same(
    tribe: &BTreeMap<String, Vec<String>>,
    duck: &BTreeMap<String, Vec<String>>,
    queries: &BTreeMap<String, String>,
) {
    for (name, ids) in tribe {
        assert_eq!(
            Some(ids),
            duck.get(name),
            "{name}: tribe and DuckDB disagree\n{}",
            queries[name]
        );
    }
}

#[test]
fn golden_segments_select_exactly_the_expected_people_in_tribe_and_duckdb() {
    let dir = golden_workspace();
    let users: BTreeMap<String, String> =
        sql(dir.path(), "select profile_id, user_id from profiles")
            .into_iter()
            .map(|r| {
                let (p, u) = r.split_once(',').unwrap();
                (p.to_string(), u.to_string())
            })
            .collect();
    let cases = expectations();
    assert!(cases.len() >= 25, "{}", cases.len());
    let list: Vec<(String, String)> = cases
        .iter()
        .map(|(n, a, _)| (n.clone(), a.clone()))
        .collect();
    let (members, duck_sql) = run_in_tribe(dir.path(), &list);
    for (name, _, expected) in &cases {
        let got: BTreeSet<String> = members[name].iter().map(|p| users[p].clone()).collect();
        assert_eq!(&got, expected, "segment {name}");
    }
    let duck = run_in_duckdb(dir.path(), &duck_sql);
    assert_same(&members, &duck, &duck_sql.0);
}

/// A demo workspace with the example segments of `queries/`.
fn demo_workspace(people: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, ws) = demo(people, 3);
    assert!(
        ws.join("queries/retention.seg").exists(),
        "the demo brings the examples"
    );
    (tmp, ws)
}

#[test]
fn examples_run_on_the_demo_and_agree_with_duckdb() {
    let (_tmp, ws) = demo_workspace(300);
    let out = ok(tribe(&ws).args(["segment", "check", "--as-of", "2026-07-01"]));
    assert!(out.contains("0 error(s)"), "{out}");
    let listed = ok(tribe(&ws).args(["segment", "list", "--format", "csv"]));
    let names: Vec<(String, String)> = listed
        .lines()
        .skip(1)
        .map(|l| {
            (
                l.split(',').next().unwrap().to_string(),
                "2026-07-01".to_string(),
            )
        })
        .collect();
    assert!(names.len() >= 8, "{listed}");
    let (members, duck_sql) = run_in_tribe(&ws, &names);
    // Realistic examples select someone, and not everyone.
    let profiles = sql(&ws, "select count(*) from profiles")[0]
        .parse::<usize>()
        .unwrap();
    for (name, ids) in &members {
        assert!(
            !ids.is_empty() && ids.len() < profiles,
            "{name}: {} members",
            ids.len()
        );
    }
    let duck = run_in_duckdb(&ws, &duck_sql);
    assert_same(&members, &duck, &duck_sql.0);
    assert!(duck_sql.1, "the demo's events carry route keys");
    // The text form of the view (`PROFILE_EVENTS_UNION`, which DuckDB gets for workspaces whose
    // events predate route keys) selects the same people; the demo's shop orders carry
    // neither a user nor an anonymous id, so both of its branches count.
    let text = run_in_duckdb(&ws, &(duck_sql.0.clone(), false));
    assert_same(&members, &text, &duck_sql.0);
}

/// Random segment expressions over the demo data's events and fields.
struct Gen(rand_chacha::ChaCha8Rng);

impl Gen {
    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.0.random_range(0..options.len())]
    }

    fn n(&mut self, lo: i64, hi: i64) -> i64 {
        self.0.random_range(lo..=hi)
    }

    fn selector(&mut self) -> String {
        self.pick(&[
            "purchase",
            "cart_add",
            "product_view",
            "email_open",
            "checkout",
            "any_view",
            "home_page",
            "big_order",
            "(\"Order Completed\" where revenue > 50)",
            "(\"Product Viewed\" where category = \"shoes\")",
            "(product_view where category in (\"bags\", \"shirts\"))",
            "screen \"Product\"",
        ])
        .to_string()
    }

    fn window(&mut self) -> String {
        match self.n(0, 6) {
            0 | 1 => String::new(),
            2 => format!(" in last {} days", self.n(1, 200)),
            3 => format!(
                " in last {} {}",
                self.n(1, 6),
                self.pick(&["weeks", "months"])
            ),
            4 => format!(" since 2026-0{}-01", self.n(1, 6)),
            5 => format!(" before 2026-0{}-15", self.n(1, 6)),
            _ => format!(
                " between 2025-1{}-01 and 2026-0{}-01",
                self.n(0, 2),
                self.n(2, 6)
            ),
        }
    }

    fn cmp(&mut self) -> &'static str {
        self.pick(&["=", "!=", "<", "<=", ">", ">="])
    }

    fn leaf(&mut self) -> String {
        let sel = self.selector();
        let win = self.window();
        match self.n(0, 16) {
            0 => format!("count({sel}{win}) {} {}", self.cmp(), self.n(0, 6)),
            1 => format!("exists({sel}{win})"),
            2 => format!("none({sel}{win})"),
            3 => format!(
                "sum(purchase.revenue{win}) {} {}",
                self.cmp(),
                self.n(0, 600)
            ),
            4 => format!(
                "avg(purchase.revenue{win}) {} {}.5",
                self.cmp(),
                self.n(10, 150)
            ),
            5 => format!(
                "{}(purchase.revenue{win}) {} {}",
                self.pick(&["min", "max", "first", "last"]),
                self.cmp(),
                self.n(10, 200)
            ),
            6 => format!(
                "count_distinct(product_view.category{win}) >= {}",
                self.n(1, 4)
            ),
            7 => format!(
                "days_since({} {sel}) {} {}",
                self.pick(&["first", "last"]),
                self.cmp(),
                self.n(1, 300)
            ),
            8 => format!(
                "seq({sel}{win} then {} within {} days)",
                self.selector(),
                self.n(1, 30)
            ),
            9 => format!(
                "seq({sel}{win} then not {} within {} days)",
                self.selector(),
                self.n(1, 10)
            ),
            10 => format!(
                "country {}in (\"DE\", \"{}\")",
                self.pick(&["", "not "]),
                self.pick(&["AT", "CH", "US", "GB"])
            ),
            11 => format!("country is {}null", self.pick(&["", "not "])),
            12 => format!("consent.email = {}", self.pick(&["true", "false"])),
            13 => format!("first_seen {} now - {} days", self.cmp(), self.n(1, 400)),
            14 => format!(
                "lower(first_name) {} \"{}\"",
                self.pick(&["starts with", "ends with", "contains"]),
                self.pick(&["a", "m", "an", "e"])
            ),
            15 => format!("length(last_name) {} {}", self.cmp(), self.n(3, 8)),
            _ => format!(
                "count({sel}{win}) * 2 + sum(purchase.revenue) / {} {} {}",
                self.n(1, 9),
                self.cmp(),
                self.n(0, 300)
            ),
        }
    }

    fn expr(&mut self, depth: u32) -> String {
        if depth == 0 || self.n(0, 2) == 0 {
            return self.leaf();
        }
        match self.n(0, 2) {
            0 => format!("({} and {})", self.expr(depth - 1), self.expr(depth - 1)),
            1 => format!("({} or {})", self.expr(depth - 1), self.expr(depth - 1)),
            _ => format!("not ({})", self.expr(depth - 1)),
        }
    }
}

#[test]
fn random_segments_compile_and_agree_with_duckdb() {
    let (_tmp, ws) = demo_workspace(200);
    let mut g = Gen(rand_chacha::ChaCha8Rng::seed_from_u64(20261123));
    let mut text = String::new();
    let mut names = Vec::new();
    for i in 0..80 {
        let e = g.expr(3);
        text.push_str(&format!("segment random_{i} =\n  {e}\n"));
        names.push((format!("random_{i}"), "2026-07-01".to_string()));
    }
    std::fs::write(ws.join("queries/random.seg"), &text).unwrap();
    let out = run(tribe(&ws).args(["segment", "check", "--as-of", "2026-07-01"]));
    assert!(
        out.status.success(),
        "random segments must compile:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (members, duck_sql) = run_in_tribe(&ws, &names);
    let duck = run_in_duckdb(&ws, &duck_sql);
    assert_same(&members, &duck, &duck_sql.0);
    // The generator is not degenerate: segments select different people.
    let distinct: BTreeSet<&Vec<String>> = members.values().collect();
    assert!(distinct.len() > 20, "{}", distinct.len());
}

#[test]
fn errors_are_all_reported_with_position_caret_and_suggestion() {
    let dir = golden_workspace();
    let bad = "event purchase2 = \"Order Complted\"\n\
               segment a = contry = \"DE\" and count(purchse in last 30 days) > 1\n\
               segment b = sum(purchase.revenu) > \"x\"\n\
               segment c = in segment d\n\
               segment d = in segment c or count(purchase) >\n\
               segment e = country = 3\n";
    std::fs::write(dir.path().join("queries/bad.seg"), bad).unwrap();
    let out = run(tribe(dir.path()).args(["segment", "check"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "queries/bad.seg:1:19",
        "no event \"Order Complted\" in the data",
        "did you mean \"Order Completed\"?",
        "bad.seg:2:13",
        "unknown profile field `contry`",
        "did you mean `country`?",
        "unknown event `purchse`",
        "did you mean `purchase`?",
        "unknown event property `revenu`",
        "did you mean `revenue`?",
        "expected a value, found `segment`",
        "cannot compare a text with a number",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // The source line is shown with the problem underlined.
    assert!(err.contains("segment a = contry = \"DE\""), "{err}");
    assert!(err.contains("──┬──") || err.contains("^"), "{err}");
    // JSON lists every error with its position.
    let out = run(tribe(dir.path()).args(["segment", "check", "--format", "json"]));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = doc["errors"].as_array().unwrap();
    assert!(errors.len() >= 7, "{doc}");
    assert!(errors.iter().any(|e| e["line"] == 2 && e["column"] == 13));

    // A cycle is named.
    std::fs::write(
        dir.path().join("queries/bad.seg"),
        "segment c = in segment d\nsegment d = country = \"DE\" and in segment c\n",
    )
    .unwrap();
    let out = run(tribe(dir.path()).args(["segment", "run", "c"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cycle: c -> d -> c"), "{err}");
}

#[test]
fn why_compile_explain_and_save() {
    let dir = golden_workspace();
    let d = dir.path();
    // why, by e-mail: each leaf with its value and verdict.
    let out = ok(tribe(d).args([
        "segment",
        "why",
        "lapsed",
        "ben@example.com",
        "--as-of",
        "2026-06-30",
        "--format",
        "json",
    ]));
    let why: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(why["member"], true, "{why}");
    let rows = why["conditions"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{why}");
    assert_eq!(
        rows[0]["condition"],
        "count(purchase in last 365 days) >= 3"
    );
    assert_eq!(rows[0]["value"], "3");
    assert_eq!(rows[0]["holds"], "yes");
    assert_eq!(rows[1]["condition"], "none(purchase in last 90 days)");
    assert_eq!(rows[1]["holds"], "yes");
    assert_eq!(rows[2]["value"], "AT");
    let out = ok(tribe(d).args([
        "segment",
        "why",
        "lapsed",
        "eve@example.org",
        "--as-of",
        "2026-06-30",
    ]));
    assert!(out.contains("is not a member"), "{out}");
    assert!(out.contains("unknown (null)"), "{out}");

    // compile prints SQL for each dialect; user strings stay literals.
    for dialect in [
        "datafusion",
        "postgres",
        "duckdb",
        "bigquery",
        "snowflake",
        "mysql",
    ] {
        let sql = ok(tribe(d).args([
            "segment",
            "compile",
            "eur_big_orders",
            "--dialect",
            dialect,
            "--as-of",
            "2026-06-30",
        ]));
        assert!(sql.contains("'EUR'"), "{dialect}: {sql}");
    }
    // The event names all conditions require, again as one single-column condition that
    // prunes Parquet pages.
    let compiled = ok(tribe(d).args(["segment", "compile", "lapsed", "--as-of", "2026-06-30"]));
    assert!(
        compiled.contains(r#""event" IN ('Order Completed')"#),
        "{compiled}"
    );
    // The scan keeps the OR of the conditions' windows only where the event names and days
    // do not already say as much (the aggregates apply their own windows).
    let scan_where = |name: &str| {
        let sql = ok(tribe(d).args(["segment", "compile", name, "--as-of", "2026-06-30"]));
        let start = sql.find("events WHERE ").expect("a scan of events");
        let end = start + sql[start..].find(" GROUP BY ").expect("grouped");
        sql[start..end].to_string()
    };
    for name in ["lapsed", "whole_days"] {
        let scan = scan_where(name);
        assert!(!scan.contains("timestamp"), "{name}: {scan}");
    }
    let scan = scan_where("carts_or_orders");
    assert!(scan.contains(r#""timestamp" > "#), "{scan}");
    let mysql = ok(tribe(d).args(["segment", "compile", "abandoned", "--dialect", "mysql"]));
    assert!(
        mysql.contains("`timestamp`") && mysql.contains("INTERVAL 1 DAY"),
        "{mysql}"
    );

    // explain: windowed aggregates prune days and push filters into the scan, in one pass.
    let out = ok(tribe(d).args([
        "segment",
        "explain",
        "lapsed",
        "--as-of",
        "2026-06-30",
        "--format",
        "json",
    ]));
    let ex: serde_json::Value = serde_json::from_str(&out).unwrap();
    let logical = ex["logical_plan"].as_str().unwrap();
    assert!(
        logical.contains("full_filters=[events.day >= Date32(\"2025-06-30\")"),
        "partition pruning: {logical}"
    );
    let events_scan = logical
        .lines()
        .find(|l| l.contains("TableScan: events"))
        .expect("the plan scans events");
    assert!(
        events_scan.contains("partial_filters=[")
            && events_scan.contains("events.event = Utf8View(\"Order Completed\")"),
        "pushdown: {logical}"
    );
    assert_eq!(
        logical.matches("TableScan: events").count(),
        1,
        "one pass: {logical}"
    );

    // --save replaces the segment's rows in segment_members, visible to SQL.
    ok(tribe(d).args([
        "segment",
        "run",
        "lapsed",
        "--as-of",
        "2026-06-30",
        "--save",
    ]));
    ok(tribe(d).args([
        "segment",
        "run",
        "funnel",
        "--as-of",
        "2026-06-30",
        "--save",
    ]));
    ok(tribe(d).args([
        "segment",
        "run",
        "lapsed",
        "--as-of",
        "2026-06-30",
        "--save",
    ]));
    let rows = sql(
        d,
        "select segment, count(*) from segment_members group by 1 order by 1",
    );
    assert_eq!(rows, vec!["funnel,2", "lapsed,2"]);
    let count = ok(tribe(d).args([
        "segment",
        "run",
        "lapsed",
        "--as-of",
        "2026-06-30",
        "--count",
    ]));
    assert_eq!(count.trim(), "2");
}

#[test]
fn event_names_follow_new_data_through_the_names_cache() {
    let dir = golden_workspace();
    let d = dir.path();
    let seg = "segment trials = exists(\"Trial Started\")\n";
    std::fs::write(d.join("queries/new.seg"), seg).unwrap();
    let out = run(tribe(d).args(["segment", "check"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no event \"Trial Started\" in the data")
    );
    assert!(d.join(".tribe/event_names.json").exists());
    // Compaction changes no data: the cache stays valid. New data adds its names.
    ok(tribe(d).args(["maintain"]));
    let line = common::track("t1", "ana", "Trial Started", "2026-06-20T00:00:00Z", "{}");
    let file = common::write(d, "trial.jsonl", &(line + "\n"));
    ok(tribe(d).args(["ingest", "events", file.to_str().unwrap()]));
    ok(tribe(d).arg("resolve"));
    ok(tribe(d).args(["segment", "check"]));
    let members = ok(tribe(d).args([
        "segment",
        "run",
        "trials",
        "--as-of",
        "2026-06-30",
        "--count",
    ]));
    assert_eq!(members.trim(), "1");
    // A cache from another table, or a damaged one, is ignored.
    std::fs::write(d.join(".tribe/event_names.json"), "{not json").unwrap();
    ok(tribe(d).args(["segment", "check"]));
}

/// Segments whose event rows the dynamic join filters prune (sequences; distinct counts,
/// first/last/avg under a profile condition; also through `in segment`) keep them; the
/// others plan without them (`Segments::session_for`). And each filter reaches the Parquet
/// scan once.
#[test]
fn dynamic_join_filters_only_where_they_prune_event_rows() {
    let dir = golden_workspace();
    runtime().block_on(async {
        let ws = tribe::Workspace::open(dir.path()).unwrap();
        let seg = Segments::open(&ws).await.unwrap();
        let at = parse_as_of(Some(DEFAULT_AS_OF)).unwrap();
        for (name, event_rows) in [
            ("lapsed", false),
            ("big_spenders", false),
            ("null_or_quiet", false),
            ("distinct_amounts", false),
            ("tie_first", false),
            ("cart_category", false),
            ("abandoned", true),
            ("funnel", true),
            ("funnel_lea", true),
            ("avg_null", true),
            ("in_seg", true),
            ("not_in_seg", true),
        ] {
            let c = seg.compile(name, at, Dialect::Datafusion).unwrap();
            assert_eq!(c.join_filters_prune, event_rows, "{name}");
            let plan = seg.explain(&c).await.unwrap().physical_plan;
            assert_eq!(
                plan.contains("DynamicFilter"),
                event_rows,
                "{name}: dynamic filters in\n{plan}"
            );
            // Without dynamic filters, the scans' filters run after the scan instead of as
            // row filters while decoding (`pushdown_filters` off).
            let lines: Vec<&str> = plan.lines().map(str::trim_start).collect();
            let filter_after_scan = lines
                .windows(2)
                .any(|w| w[0].starts_with("FilterExec") && w[1].starts_with("DeltaScanExec"));
            assert_eq!(
                filter_after_scan, !event_rows,
                "{name}: filter after a scan in\n{plan}"
            );
        }
        // A query's filter reaches the Parquet scan once (the Delta provider does not add
        // its own copy of what DataFusion pushes down).
        let df = seg
            .ctx
            .sql("EXPLAIN SELECT count(*) FROM events WHERE event = 'Order Completed'")
            .await
            .unwrap();
        let plan = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string();
        let scan = plan
            .split("predicate=")
            .nth(1)
            .and_then(|p| p.split("pruning_predicate").next())
            .unwrap_or_else(|| panic!("no predicate in the scan:\n{plan}"));
        assert_eq!(scan.matches("Order Completed").count(), 1, "{plan}");
    });
}

/// In a session that runs many queries, each events file's footer and page index are in the
/// Parquet metadata cache, under the key its scans look up, so a query reads neither again
/// (DataFusion's scan alone caches the footer but reloads the page index every time).
#[test]
fn events_page_indexes_stay_cached_between_queries() {
    let dir = golden_workspace();
    runtime().block_on(async {
        let ws = tribe::Workspace::open(dir.path()).unwrap();
        let seg = Segments::open_for_many_queries(&ws).await.unwrap();
        let at = parse_as_of(Some(DEFAULT_AS_OF)).unwrap();
        let c = seg.compile("lapsed", at, Dialect::Datafusion).unwrap();
        let days = sql_count(dir.path(), "select count(distinct day) from events") as usize;
        for _ in 0..2 {
            seg.members(&c).await.unwrap();
        }
        let cache = seg
            .ctx
            .runtime_env()
            .cache_manager
            .get_file_metadata_cache();
        let entries = cache.list_entries();
        let events: Vec<_> = entries
            .iter()
            .filter(|(path, _)| path.as_ref().contains("/events/"))
            .collect();
        // One entry per file (the golden workspace has one file per day): none added by a
        // scan under another key.
        assert_eq!(events.len(), days, "{:?}", entries.keys());
        for (path, entry) in &events {
            let info = entry.value.file_metadata.extra_info();
            assert_eq!(
                info.get("page_index").map(String::as_str),
                Some("true"),
                "{path}"
            );
        }
        assert!(
            events.iter().any(|(_, e)| e.hits >= 2),
            "the scans used the entries"
        );
    });
}
