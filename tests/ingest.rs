//! Ingestion and SQL through the real binary, on a local folder and on a real S3 server.

mod common;

use common::{Backend, bytes_scanned, ok, run, sql, sql_count, track, tribe, workspace, write};

const RECORDS: &str = r#"
[records.crm]
identifiers = { email = "email", phone = "phone", crm_id = "contact_id" }
traits = { first_name = "first_name" }
consent = { email = "email_opt_in" }
columns = { lifetime_value = "double" }

[records.pos]
identifiers = { email = "email", loyalty_id = "card" }
columns = { total = "double" }
[records.pos.event]
timestamp = "ordered_at"
name = "Order Completed"
message_id = "order_id"
properties = { revenue = "total", currency = "currency", order_id = "order_id" }
"#;

/// Runs each scenario on both storage backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $( #[test] fn $name() { super::$name(super::Backend::Local) } )*
        }
        mod s3 {
            $( #[test] fn $name() { super::$name(super::Backend::S3) } )*
        }
    };
}

on_both_backends!(
    events_are_stored_once_and_queryable,
    bad_rows_go_to_rejected_with_positions,
    strict_ingest_commits_nothing,
    csv_and_parquet_events,
    records_with_mapping_and_derived_events,
    concurrent_ingests_both_land,
    maintain_compacts_and_keeps_data,
);

fn events_are_stored_once_and_queryable(backend: Backend) {
    let ws = workspace(backend, "");
    let dir = ws.path();
    let lines = [
        track("m1", "u1", "Order Completed", "2026-03-01T10:00:00Z", r#"{"revenue":10.5,"currency":"EUR"}"#),
        track("m2", "u1", "Order Completed", "2026-03-02T10:00:00Z", r#"{"revenue":"4.5","currency":"EUR"}"#),
        r#"{"type":"page","messageId":"m3","anonymousId":"a1","name":"Home","timestamp":"2026-03-02T11:00:00Z","properties":{"path":"/"}}"#.to_string(),
        r#"{"type":"identify","messageId":"m4","userId":"u1","anonymousId":"a1","timestamp":"2026-03-02T11:01:00Z","traits":{"email":"ana@example.com"}}"#.to_string(),
        r#"{"type":"alias","messageId":"m5","userId":"u1","previousId":"old","timestamp":"2026-03-02T11:02:00Z"}"#.to_string(),
    ];
    let web = write(dir, "web.jsonl", &lines.join("\n"));
    let out = ok(tribe(dir)
        .args(["ingest", "events", "--format", "json"])
        .arg(&web));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["inserted"], 5, "{out}");
    assert_eq!(report["rejected"], 0);

    assert_eq!(sql_count(dir, "select count(*) from events"), 5);
    assert_eq!(
        sql(
            dir,
            "select type, count(*) from events group by 1 order by 1"
        ),
        vec!["alias,1", "identify,1", "page,1", "track,2"]
    );
    assert_eq!(
        sql(dir, "select sum(prop_revenue) from events"),
        vec!["15.0"]
    );
    assert_eq!(
        sql(
            dir,
            "select json_get_str(traits, 'email') from events where type = 'identify'"
        ),
        vec!["ana@example.com"]
    );
    assert_eq!(sql(dir, "select distinct source from events"), vec!["web"]);
    // The interactive shell loads every events file's footer and page index into its cache
    // when it starts (`tribe::sql::session_for_many_queries`), under the keys the scans look up, on
    // either storage: its scan then reads only data pages, where a one-shot query also reads
    // each file's footer and page index.
    let explain = "EXPLAIN ANALYZE select count(*) from events where event = 'Order Completed'";
    let one_shot = ok(tribe(dir).args(["sql", "--format", "csv", explain]));
    let mut shell = tribe(dir)
        .args(["sql", "--format", "csv"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("{explain};\n");
    std::io::Write::write_all(&mut shell.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = shell.wait_with_output().unwrap();
    let in_shell = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (read_once, read_in_shell) = (bytes_scanned(&one_shot), bytes_scanned(&in_shell));
    assert!(
        read_in_shell > 0.0 && read_in_shell < read_once,
        "shell {read_in_shell} bytes, one-shot {read_once}:\n{in_shell}\n{one_shot}"
    );
    assert_eq!(
        sql(
            dir,
            "select cast(day as varchar), count(*) from events group by 1 order by 1"
        ),
        vec!["2026-03-01,1", "2026-03-02,4"]
    );

    // The same file again, and an overlapping one: nothing is stored twice.
    let out = ok(tribe(dir)
        .args(["ingest", "events", "--format", "json"])
        .arg(&web));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["inserted"], 0, "{out}");
    assert_eq!(report["duplicates"], 5);
    let more = write(
        dir,
        "more.jsonl",
        &[
            lines[0].clone(),
            track("m6", "u2", "Product Viewed", "2026-03-01T12:00:00Z", "{}"),
        ]
        .join("\n"),
    );
    ok(tribe(dir)
        .args(["ingest", "events", "--source", "app"])
        .arg(&more));
    assert_eq!(sql_count(dir, "select count(*) from events"), 6);
    assert_eq!(
        sql_count(dir, "select count(distinct message_id) from events"),
        6
    );
    assert_eq!(
        sql(dir, "select source from events where message_id = 'm6'"),
        vec!["app"]
    );
}

fn bad_rows_go_to_rejected_with_positions(backend: Backend) {
    let ws = workspace(backend, "");
    let dir = ws.path();
    let big = "x".repeat(40_000);
    let text = [
        track("ok1", "u1", "E", "2026-03-01T10:00:00Z", "{}"),
        "{not json".to_string(),
        r#"{"type":"track","messageId":"t1","userId":"u1","event":"E"}"#.to_string(),
        track(
            "t2",
            "u1",
            "E",
            "2026-03-01T10:00:00Z",
            r#"{"revenue":"lots"}"#,
        ),
        r#"{"type":"track","messageId":"t3","event":"E","timestamp":"2026-03-01"}"#.to_string(),
        track(
            "t4",
            "u1",
            "E",
            "2026-03-01T10:00:00Z",
            &format!(r#"{{"blob":"{big}"}}"#),
        ),
        track("ok2", "u1", "E", "2026-03-01T11:00:00Z", "{}"),
    ]
    .join("\n");
    let file = write(dir, "bad.jsonl", &text);
    let out = run(tribe(dir).args(["ingest", "events"]).arg(&file));
    assert!(out.status.success(), "some rows were accepted: exit 0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or("")
            .to_string()
    };
    assert!(line("rejected").ends_with(": 5"), "{stdout}");
    assert!(line("accepted").ends_with(": 2"), "{stdout}");
    assert!(stdout.contains("bad.jsonl:2: invalid JSON"), "{stdout}");
    assert!(
        stdout.contains("bad.jsonl:3: timestamp: missing timestamp"),
        "{stdout}"
    );

    assert_eq!(sql_count(dir, "select count(*) from events"), 2);
    let rows = sql(
        dir,
        "select line, field, reason from rejected order by line",
    );
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows[0].starts_with("2,,invalid JSON"), "{rows:?}");
    assert!(
        rows[1].starts_with("3,timestamp,missing timestamp"),
        "{rows:?}"
    );
    assert!(
        rows[2].starts_with("4,properties.revenue,\"expected a number"),
        "{rows:?}"
    );
    assert!(rows[3].starts_with("5,userId,missing id"), "{rows:?}");
    assert!(rows[4].starts_with("6,,\"message is"), "{rows:?}");
    assert!(
        sql(dir, "select distinct file from rejected")[0].ends_with("bad.jsonl"),
        "the source file is recorded"
    );

    // Re-running the same ingest stores neither the events nor the rejections again.
    ok(tribe(dir).args(["ingest", "events"]).arg(&file));
    assert_eq!(sql_count(dir, "select count(*) from rejected"), 5);
    assert_eq!(sql_count(dir, "select count(*) from events"), 2);

    // Nothing accepted: exit status 1, and the rejections are still recorded.
    let all_bad = write(dir, "allbad.jsonl", "{\n[1]\n");
    let out = run(tribe(dir).args(["ingest", "events"]).arg(&all_bad));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was accepted"));
    assert_eq!(sql_count(dir, "select count(*) from rejected"), 7);
}

fn strict_ingest_commits_nothing(backend: Backend) {
    let ws = workspace(backend, "");
    let dir = ws.path();
    let good = write(
        dir,
        "good.jsonl",
        &track("g1", "u1", "E", "2026-03-01T10:00:00Z", "{}"),
    );
    ok(tribe(dir).args(["ingest", "events"]).arg(&good));
    let text = [
        track("s1", "u1", "E", "2026-03-01T10:00:00Z", "{}"),
        track("s2", "u1", "E", "bad time", "{}"),
    ]
    .join("\n");
    let file = write(dir, "mixed.jsonl", &text);
    let out = run(tribe(dir).args(["ingest", "events", "--strict"]).arg(&file));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("strict ingest"), "{stderr}");
    assert!(
        stderr.contains("mixed.jsonl:2: timestamp: unparseable time"),
        "{stderr}"
    );
    assert_eq!(sql_count(dir, "select count(*) from events"), 1);
    assert_eq!(sql(dir, "select message_id from events"), vec!["g1"]);
}

fn csv_and_parquet_events(backend: Backend) {
    let ws = workspace(backend, "");
    let dir = ws.path();
    let csv = "type,messageId,userId,event,timestamp,properties.revenue,properties.currency,coupon\n\
               track,c1,u1,Order Completed,2026-03-01T10:00:00Z,12.5,EUR,SPRING\n\
               track,c2,u2,Order Completed,not a time,3,EUR,\n";
    let file = write(dir, "shop.csv", csv);
    let out = ok(tribe(dir)
        .args(["ingest", "events", "--format", "json"])
        .arg(&file));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["inserted"], 1, "{out}");
    assert_eq!(report["rejected"], 1, "{out}");
    assert_eq!(
        sql(
            dir,
            "select prop_revenue, prop_currency, json_get_str(properties, 'coupon') from events"
        ),
        vec!["12.5,EUR,SPRING"]
    );
    assert_eq!(sql(dir, "select line from rejected"), vec!["3"]);

    // Export the table to Parquet with SQL, then ingest that file into a second workspace.
    let parquet = dir.join("export.parquet");
    ok(tribe(dir).args([
        "sql",
        &format!(
            "copy (select message_id as \"messageId\", type, user_id as \"userId\", event, \
             timestamp, properties from events) to '{}' stored as parquet",
            parquet.display()
        ),
    ]));
    let ws2 = workspace(backend, "");
    let out = ok(tribe(ws2.path())
        .args(["ingest", "events", "--format", "json"])
        .arg(&parquet));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["inserted"], 1, "{out}");
    assert_eq!(
        sql(
            ws2.path(),
            "select message_id, prop_revenue, cast(timestamp as varchar) from events"
        ),
        vec!["c1,12.5,2026-03-01T10:00:00Z"]
    );
}

fn records_with_mapping_and_derived_events(backend: Backend) {
    let ws = workspace(backend, RECORDS);
    let dir = ws.path();
    let contacts = "contact_id,first_name,email,phone,email_opt_in,lifetime_value\n\
                    C1,Ana, Ana@Example.com ,+49 151 1234567,yes,120.5\n\
                    ,Ben,,,no,\n\
                    C3,Cleo,cleo@example.com,,maybe,\n\
                    C4,Dan,dan@example.com,,no,a lot\n\
                    C5,Eve,eve@example.com,0151-7654321,,0\n";
    let file = write(dir, "contacts.csv", contacts);
    let out = ok(tribe(dir)
        .args(["ingest", "records", "--source", "crm", "--format", "json"])
        .arg(&file));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["inserted"], 2, "{out}");
    assert_eq!(report["rejected"], 3, "{out}");
    assert_eq!(
        sql(
            dir,
            "select contact_id, email, lifetime_value from crm order by contact_id"
        ),
        vec!["C1, Ana@Example.com ,120.5", "C5,eve@example.com,0.0"]
    );
    let reasons = sql(dir, "select line, field from rejected order by line");
    assert_eq!(
        reasons,
        vec![
            "3,\"contact_id, email, phone\"",
            "4,email_opt_in",
            "5,lifetime_value"
        ]
    );
    // Idempotent.
    ok(tribe(dir)
        .args(["ingest", "records", "--source", "crm"])
        .arg(&file));
    assert_eq!(sql_count(dir, "select count(*) from crm"), 2);

    let orders = "order_id,ordered_at,email,card,total,currency\n\
                  O1,2026-03-01 10:00:00,ana@example.com,,99.9,EUR\n\
                  O2,2026-03-02 10:00:00,,L77,10,EUR\n\
                  O3,,ana@example.com,,5,EUR\n";
    let file = write(dir, "orders.csv", orders);
    let out = ok(tribe(dir)
        .args(["ingest", "records", "--source", "pos", "--format", "json"])
        .arg(&file));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["inserted"], 2, "{out}");
    assert_eq!(report["events_inserted"], 2, "{out}");
    assert_eq!(
        sql(
            dir,
            "select message_id, event, prop_revenue, source, route_id from events order by 1"
        ),
        vec![
            "pos:O1,Order Completed,99.9,pos,pos:O1",
            "pos:O2,Order Completed,10.0,pos,pos:O2"
        ]
    );
    assert_eq!(
        sql(
            dir,
            "select json_get_str(context, 'traits', 'email') from events where message_id = 'pos:O1'"
        ),
        vec!["ana@example.com"]
    );
    ok(tribe(dir)
        .args(["ingest", "records", "--source", "pos"])
        .arg(&file));
    assert_eq!(sql_count(dir, "select count(*) from events"), 2);

    // A source that is not configured, and a file that lacks every identifier column.
    let out = run(tribe(dir)
        .args(["ingest", "records", "--source", "erp"])
        .arg(&file));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown record source `erp`"));
    let nocols = write(dir, "x.csv", "a,b\n1,2\n");
    let out = run(tribe(dir)
        .args(["ingest", "records", "--source", "crm"])
        .arg(&nocols));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not in the file"));
}

fn concurrent_ingests_both_land(backend: Backend) {
    let ws = workspace(backend, "");
    let dir = ws.path();
    let make = |prefix: &str, n: usize| {
        (0..n)
            .map(|i| {
                track(
                    &format!("{prefix}{i}"),
                    "u",
                    "E",
                    &format!("2026-03-0{}T10:00:00Z", 1 + i % 3),
                    "{}",
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let a = write(dir, "a.jsonl", &make("a", 300));
    let b = write(dir, "b.jsonl", &make("b", 300));
    let shared = write(dir, "shared.jsonl", &make("s", 300));
    // Two different files into the same days, and the same file twice, all at once.
    let spawn = |f: &std::path::Path| {
        tribe(dir)
            .args(["ingest", "events"])
            .arg(f)
            .spawn()
            .unwrap()
    };
    let children = vec![spawn(&a), spawn(&b), spawn(&shared), spawn(&shared)];
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(sql_count(dir, "select count(*) from events"), 900);
    assert_eq!(
        sql_count(dir, "select count(distinct message_id) from events"),
        900
    );
}

fn maintain_compacts_and_keeps_data(backend: Backend) {
    let ws = workspace(backend, "");
    let dir = ws.path();
    let ingest = |i: usize, event: &str| {
        let f = write(
            dir,
            &format!("f{i}.jsonl"),
            &track(&format!("m{i}"), "u", event, "2026-03-01T10:00:00Z", "{}"),
        );
        ok(tribe(dir).args(["ingest", "events"]).arg(&f));
    };
    for (i, event) in ["Zeta", "Alpha", "Mid", "Beta"].into_iter().enumerate() {
        ingest(i, event);
    }
    let maintain = || -> serde_json::Value {
        let out = ok(tribe(dir).args([
            "maintain",
            "--table",
            "events",
            "--retention-hours",
            "0",
            "--format",
            "json",
        ]));
        serde_json::from_str(&out).unwrap()
    };
    let before = sql(dir, "select message_id from events order by 1");
    let report = maintain();
    assert_eq!(report[0]["files_before"], 4, "{report}");
    assert_eq!(report[0]["files_after"], 1, "{report}");
    assert_eq!(report[0]["files_vacuumed"], 4, "{report}");
    assert_eq!(sql(dir, "select message_id from events order by 1"), before);
    // The day's one file is sorted by event name (a one-file scan keeps the file's order).
    assert_eq!(
        sql(dir, "select event from events"),
        vec!["Alpha", "Beta", "Mid", "Zeta"]
    );
    // A sorted day is left alone until new data arrives in it.
    assert_eq!(maintain()[0]["files_compacted"], 0);
    ingest(4, "Gamma");
    let report = maintain();
    assert_eq!(report[0]["files_compacted"], 2, "{report}");
    assert_eq!(
        sql(dir, "select event from events"),
        vec!["Alpha", "Beta", "Gamma", "Mid", "Zeta"]
    );
}

/// The columns of `events` that segments scan are LZ4 (no codec context to create per column
/// chunk read), the ids and JSON text zstd; compaction keeps it so.
#[test]
fn events_codecs_per_column() {
    use parquet::basic::Compression;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let ws = workspace(Backend::Local, "");
    let dir = ws.path();
    let codecs = || {
        let mut files = Vec::new();
        let mut stack = vec![dir.join("data/events")];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(d).unwrap() {
                let path = entry.unwrap().path();
                if path.ends_with("_delta_log") {
                    continue; // its checkpoints are Parquet too
                } else if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    files.push(path);
                }
            }
        }
        assert!(!files.is_empty());
        files
            .iter()
            .map(|f| {
                let reader = SerializedFileReader::new(std::fs::File::open(f).unwrap()).unwrap();
                let rg = reader.metadata().row_group(0).clone();
                rg.columns()
                    .iter()
                    .map(|c| (c.column_path().string(), c.compression()))
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .collect::<Vec<_>>()
    };
    for (i, event) in ["Order Completed", "Signed Up"].into_iter().enumerate() {
        let f = write(
            dir,
            &format!("e{i}.jsonl"),
            &track(
                &format!("m{i}"),
                "u",
                event,
                "2026-03-01T10:00:00Z",
                r#"{"revenue":1}"#,
            ),
        );
        ok(tribe(dir).args(["ingest", "events"]).arg(&f));
    }
    let check = |files: Vec<std::collections::BTreeMap<String, Compression>>| {
        for columns in files {
            for lz4 in ["event", "timestamp", "route_hi", "route_lo", "prop_revenue"] {
                assert_eq!(columns[lz4], Compression::LZ4_RAW, "{lz4}: {columns:?}");
            }
            for column in [
                "message_id",
                "user_id",
                "anonymous_id",
                "properties",
                "context",
            ] {
                assert!(
                    matches!(columns[column], Compression::ZSTD(_)),
                    "{column}: {columns:?}"
                );
            }
        }
    };
    check(codecs());
    ok(tribe(dir).args(["maintain", "--table", "events", "--retention-hours", "0"]));
    let after = codecs();
    assert_eq!(after.len(), 1, "compacted into one file");
    check(after);
}
