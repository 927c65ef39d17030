//! Workspaces, errors, the demo, crash safety and interoperability, through the real binary.

mod common;

use std::process::Stdio;

use common::{Backend, ok, python_run, run, sql, sql_count, track, tribe, workspace, write};

#[test]
fn init_and_workspace_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(tribe(dir.path()).args(["init", "shop"]));
    assert!(out.contains("created workspace"), "{out}");
    let shop = dir.path().join("shop");
    assert!(shop.join("tribe.toml").is_file());
    // From a subfolder, the nearest tribe.toml upward is found.
    let sub = shop.join("a/b");
    std::fs::create_dir_all(&sub).unwrap();
    let f = write(
        &sub,
        "e.jsonl",
        &track("m1", "u", "E", "2026-03-01T00:00:00Z", "{}"),
    );
    ok(tribe(&sub).args(["ingest", "events"]).arg(&f));
    assert!(shop.join("data/events/_delta_log").is_dir());
    // --workspace and TRIBE_WORKSPACE point elsewhere.
    let n = ok(tribe(dir.path()).args([
        "--workspace",
        "shop",
        "sql",
        "--format",
        "csv",
        "select count(*) from events",
    ]));
    assert_eq!(n.lines().nth(1), Some("1"));
    let n = ok(tribe(dir.path()).env("TRIBE_WORKSPACE", &shop).args([
        "sql",
        "--format",
        "json",
        "select count(*) as n from events",
    ]));
    assert_eq!(n.trim(), r#"[{"n":1}]"#);
    // A second init in the same place is refused.
    let out = run(tribe(dir.path()).args(["init", "shop"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn clear_errors_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    let expect_error = |args: &[&str], config: Option<&str>, needle: &str| {
        if let Some(c) = config {
            std::fs::write(dir.path().join("tribe.toml"), c).unwrap();
        }
        let out = run(tribe(dir.path()).args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    expect_error(&["sql", "select 1"], None, "no workspace found");
    expect_error(&["sql", "select 1"], Some("[workspace\n"), "tribe.toml:");
    expect_error(
        &["sql", "select 1"],
        Some("[workspace]\nstorage = \"ftp://x/y\"\n"),
        "unsupported scheme",
    );
    expect_error(
        &["ingest", "events", "missing.jsonl"],
        Some(""),
        "missing.jsonl: no such file",
    );
    expect_error(&["ingest", "events", "x.xlsx"], None, "unknown file type");
    expect_error(&["sql", "select * from nowhere"], None, "nowhere");
    expect_error(
        &["init", "fresh", "--storage", "s3://"],
        None,
        "bad storage URL",
    );
    let out = run(tribe(dir.path()).args(["sql", "--format", "xml", "select 1"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn output_formats() {
    let ws = workspace(Backend::Local, "");
    let dir = ws.path();
    let q = "select 1 as a, 'x,y' as b";
    let table = ok(tribe(dir).args(["sql", q]));
    assert!(table.contains("| a | b   |"), "{table}");
    assert!(table.contains("(1 row)"), "{table}");
    assert_eq!(
        ok(tribe(dir).args(["sql", "--format", "csv", q])),
        "a,b\n1,\"x,y\"\n"
    );
    assert_eq!(
        ok(tribe(dir).args(["sql", "--format", "json", q])).trim(),
        r#"[{"a":1,"b":"x,y"}]"#
    );
    assert_eq!(
        ok(tribe(dir).args(["sql", "--format", "json", "select 1 as a where false"])).trim(),
        "[]"
    );
}

#[test]
fn demo_builds_a_reproducible_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(tribe(dir.path()).args(["demo", "one", "--people", "150", "--seed", "3"]));
    assert!(out.contains("as-of time : 2026-07-01T00:00:00Z"), "{out}");
    assert!(out.contains("tribe sql"), "{out}");
    let one = dir.path().join("one");
    let counts = sql(
        &one,
        "select source, count(*) from events group by 1 order by 1",
    );
    let sources: Vec<&str> = counts
        .iter()
        .map(|r| r.split(',').next().unwrap())
        .collect();
    assert_eq!(sources, vec!["app", "email", "pos", "web"], "{counts:?}");
    let events = [
        "Product Viewed",
        "Product Added",
        "Checkout Started",
        "Order Completed",
        "Email Opened",
        "Signed Up",
    ];
    for e in events {
        assert!(
            sql_count(
                &one,
                &format!("select count(*) from events where event = '{e}'")
            ) > 0,
            "no {e}"
        );
    }
    assert!(sql_count(&one, "select count(*) from events where type = 'identify'") > 0);
    assert!(sql_count(&one, "select count(*) from crm") > 0);
    assert_eq!(
        sql_count(&one, "select count(*) from rejected where 1 = 0"),
        0
    );
    assert_eq!(
        sql_count(
            &one,
            "select count(*) from events where event = 'Order Completed' and prop_revenue is null"
        ),
        0
    );
    // Anonymous visits later identified: an anonymous id seen without and then with a user id.
    assert!(
        sql_count(
            &one,
            "select count(*) from (select anonymous_id from events where anonymous_id is not null \
             group by 1 having count(*) filter (where user_id is null) > 0 \
             and count(*) filter (where user_id is not null) > 0)"
        ) > 0
    );
    let truth = std::fs::read_to_string(one.join("truth.csv")).unwrap();
    assert!(truth.starts_with("id_type,id_value,person_id\n"));
    for kind in [
        "user_id",
        "anonymous_id",
        "email",
        "phone",
        "crm_id",
        "loyalty_id",
    ] {
        assert!(truth.contains(&format!("\n{kind},")), "truth has no {kind}");
    }
    // Noisy spellings are kept as they appear in the raw data.
    let emails: Vec<&str> = truth.lines().filter(|l| l.starts_with("email,")).collect();
    assert!(
        emails.iter().any(|l| l.starts_with("email, ")),
        "an e-mail with spaces"
    );
    assert!(emails.iter().any(|l| {
        l.split(',')
            .nth(1)
            .unwrap()
            .chars()
            .any(|c| c.is_ascii_uppercase())
    }));

    // Every identifier in the raw data has its true person.
    let checks = [
        (
            "user_id",
            "select distinct user_id v from events where user_id is not null",
        ),
        (
            "anonymous_id",
            "select distinct anonymous_id v from events where anonymous_id is not null",
        ),
        (
            "email",
            "select distinct json_get_str(traits, 'email') v from events where type = 'identify'",
        ),
        ("email", "select distinct email v from crm"),
        (
            "phone",
            "select distinct phone v from crm where phone is not null",
        ),
        ("crm_id", "select distinct contact_id v from crm"),
        (
            "loyalty_id",
            "select distinct loyalty_id v from pos where loyalty_id is not null",
        ),
    ];
    for (kind, values) in checks {
        let q = format!(
            "select count(*) from ({values}) x left anti join \
             (select id_value from 'truth.csv' where id_type = '{kind}') t on x.v = t.id_value"
        );
        assert_eq!(
            sql_count(&one, &q),
            0,
            "{kind} missing from truth.csv: {values}"
        );
    }
    // Same seed, same data.
    ok(tribe(dir.path()).args(["demo", "two", "--people", "150", "--seed", "3"]));
    let two = dir.path().join("two");
    for f in ["sources/web.jsonl", "sources/crm_contacts.csv", "truth.csv"] {
        assert_eq!(
            std::fs::read(one.join(f)).unwrap(),
            std::fs::read(two.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let out = run(tribe(dir.path()).args(["demo", "two"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "an existing workspace is not overwritten"
    );
}

#[test]
fn tables_are_readable_by_another_delta_reader() {
    let ws = workspace(Backend::Local, "");
    let dir = ws.path();
    let lines: Vec<String> = (0..50)
        .map(|i| {
            track(
                &format!("m{i}"),
                "u",
                "E",
                &format!("2026-03-{:02}T10:00:00Z", 1 + i % 5),
                r#"{"revenue":2}"#,
            )
        })
        .collect();
    let f = write(dir, "e.jsonl", &lines.join("\n"));
    ok(tribe(dir).args(["ingest", "events"]).arg(&f));
    let script = format!(
        "from deltalake import DeltaTable\n\
         t = DeltaTable('{}')\n\
         d = t.to_pyarrow_table()\n\
         print(d.num_rows, sum(d.column('prop_revenue').to_pylist()), sorted(t.metadata().partition_columns))\n\
         import os, sys; sys.stdout.flush(); os._exit(0)",
        dir.join("data/events").display()
    );
    let stdout = python_run(&script);
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), "50 100.0 ['day']");
}

#[test]
fn a_killed_ingest_leaves_the_old_version_and_a_rerun_completes() {
    let ws = workspace(Backend::Local, "");
    let dir = ws.path();
    let first = write(
        dir,
        "first.jsonl",
        &track("f1", "u", "E", "2026-03-01T10:00:00Z", "{}"),
    );
    ok(tribe(dir).args(["ingest", "events"]).arg(&first));
    // A file large enough that the ingest is still running when it is killed.
    let big: String = (0..400_000)
        .map(|i| {
            track(
                &format!("b{i}"),
                "u",
                "E",
                &format!("2026-03-{:02}T10:00:00Z", 1 + i % 28),
                r#"{"revenue":1}"#,
            ) + "\n"
        })
        .collect();
    let file = write(dir, "big.jsonl", &big);
    for delay_ms in [50u64, 300, 800] {
        let mut child = tribe(dir)
            .args(["ingest", "events"])
            .arg(&file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever the moment, a reader sees a consistent table: all of the big file or none.
        let n = sql_count(dir, "select count(*) from events");
        assert!(n == 1 || n == 400_001, "partial ingest visible: {n} rows");
    }
    ok(tribe(dir).args(["ingest", "events"]).arg(&file));
    assert_eq!(sql_count(dir, "select count(*) from events"), 400_001);
    assert_eq!(
        sql_count(dir, "select count(distinct message_id) from events"),
        400_001
    );
    // Files of killed ingests are unreferenced; maintain removes them.
    let out = ok(tribe(dir).args([
        "maintain",
        "--vacuum-only",
        "--retention-hours",
        "0",
        "--format",
        "json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let events = report
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["table"] == "events")
        .unwrap();
    assert_eq!(events["files_after"], events["files_before"], "{out}");
    assert_eq!(sql_count(dir, "select count(*) from events"), 400_001);
}

#[test]
fn interactive_shell_reads_statements_until_quit() {
    use std::io::Write;
    let ws = workspace(Backend::Local, "");
    let mut child = tribe(ws.path())
        .args(["sql", "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A statement over two lines, one with an error, then one more; .quit ends the session.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"select 40 +\n 2 as x;\nselect * from nowhere;\nselect 'b' as y;\n.quit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("x\n42\n"), "{stdout}");
    assert!(
        stdout.contains("y\nb\n"),
        "an error does not end the session: {stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
    assert!(
        ws.path().join(".tribe_history").is_file(),
        "history is kept"
    );
}
