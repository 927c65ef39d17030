//! Privacy requests against the real binary: erasure everywhere (every table, every column,
//! every file in storage including superseded versions and export files) while everyone else's
//! rows stay exactly as they were; a kill -9 in the middle of an erasure and a re-run; tombstones
//! keeping the person out of later ingests; consent decisions; subject access and the audit log.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::{demo, ok, python_run, sql, sql_count, tribe, write};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `tribe ingest events FILE --format json`, as JSON.
fn ingest(dir: &Path, file: &Path) -> Value {
    serde_json::from_str(&ok(tribe(dir).args([
        "ingest",
        "events",
        file.to_str().unwrap(),
        "--format",
        "json",
    ])))
    .unwrap()
}

/// Tables whose rows may be added by a privacy request (bookkeeping, no personal data).
const BOOKKEEPING: &[&str] = &["privacy_log", "privacy_tombstones", "resolve_runs"];

/// The demo workspace with exports delivered and a segment saved, and the e-mail of a person
/// who is in all of it (a VIP who agreed to ads is in the `vip_google` audience).
fn prepared(seed: u32) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let (tmp, dir) = demo(300, seed);
    ok(tribe(&dir).args(["segment", "run", "vip_by_spend", "--save"]));
    ok(tribe(&dir).args(["export", "run", "vip_google"]));
    ok(tribe(&dir).args(["export", "run", "winback_email"]));
    let email = sql(
        &dir,
        "select p.email from profiles p join segment_members m using (profile_id) \
         where p.email is not null and p.phone is not null and p.consent_ads is true \
         order by p.identifiers desc, p.events desc, p.email limit 1",
    );
    assert_eq!(email.len(), 1, "the demo has a VIP with e-mail and phone");
    (tmp, dir, email[0].clone())
}

/// Every value that identifies the person as stored anywhere: identifiers, their raw
/// spellings in events and records, the profile id, and the hashed forms exports deliver.
fn values_of(dir: &Path, email: &str) -> Vec<String> {
    let shown: Value = serde_json::from_str(&ok(
        tribe(dir).args(["privacy", "show", email, "--format", "json"])
    ))
    .unwrap();
    let mut values = vec![shown["profile_id"].as_str().unwrap().to_string()];
    for id in shown["identifiers"].as_array().unwrap() {
        let v = id["value"].as_str().unwrap().to_string();
        if ["email", "phone"].contains(&id["type"].as_str().unwrap()) {
            values.push(hex::encode(Sha256::digest(v.as_bytes())));
        }
        values.push(v);
    }
    let tables = &shown["tables"];
    for row in tables["profile_keys"].as_array().unwrap() {
        if row["key_type"] != "message_id" {
            values.push(row["key"].as_str().unwrap().to_string());
        }
    }
    for table in ["crm", "pos"] {
        for row in tables[table].as_array().into_iter().flatten() {
            for column in ["email", "phone", "contact_id", "loyalty_id"] {
                if let Some(v) = row[column].as_str() {
                    values.push(v.to_string());
                }
            }
        }
    }
    values.sort();
    values.dedup();
    values.retain(|v| v.len() >= 5);
    values
}

/// Every table's rows as CSV lines, split into those that mention one of `values` and the
/// others (sorted).
fn rows_by_mention(dir: &Path, values: &[String]) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let tables = ok(tribe(dir).args(["tables", "--format", "csv"]));
    let mut out = BTreeMap::new();
    for line in tables.lines().skip(1) {
        let name = line.split(',').next().unwrap().to_string();
        let rows = sql(dir, &format!("select * from \"{name}\""));
        let (mut mine, mut others): (Vec<String>, Vec<String>) = rows
            .into_iter()
            .partition(|r| values.iter().any(|v| r.contains(v.as_str())));
        mine.sort();
        others.sort();
        out.insert(name, (mine, others));
    }
    out
}

/// Files anywhere in storage (data files of every version, export files and states) that hold
/// one of `values`, as "file: value".
fn files_mentioning(dir: &Path, values: &[String]) -> Vec<String> {
    let script = format!(
        r#"
import json, os, pyarrow.parquet as pq
values = json.loads({values:?})
hits = []
for root, dirs, files in os.walk({root:?}):
    if "_delta_log" in root or "_privacy" in root:
        continue
    for f in files:
        path = os.path.join(root, f)
        if f.endswith(".parquet"):
            t = pq.read_table(path)
            text = json.dumps(t.to_pylist(), default=str)
        else:
            text = open(path, encoding="utf-8", errors="replace").read()
        for v in values:
            if v in text:
                hits.append(path + ": " + v)
print(json.dumps(hits))
"#,
        values = serde_json::to_string(values).unwrap(),
        root = dir.join("data").display().to_string(),
    );
    serde_json::from_slice(&python_run(&script)).unwrap()
}

/// Asserts that nothing in the workspace mentions the person any more, and that every other
/// row is exactly as it was, except rows mentioning one of `changed` (people whose data the
/// erasure legitimately touched).
fn assert_erased(
    dir: &Path,
    values: &[String],
    before: &BTreeMap<String, (Vec<String>, Vec<String>)>,
    changed: &[&str],
) {
    let after = rows_by_mention(dir, values);
    for (table, (mine, others)) in &after {
        assert!(
            mine.is_empty(),
            "{table} still mentions the person: {mine:?}"
        );
        let Some((_, before_others)) = before.get(table) else {
            continue;
        };
        if BOOKKEEPING.contains(&table.as_str()) {
            assert!(
                before_others.iter().all(|r| others.contains(r)),
                "{table}: rows of others changed"
            );
        } else {
            let kept = |r: &&String| !changed.iter().any(|c| r.contains(c));
            let gone: Vec<_> = before_others
                .iter()
                .filter(kept)
                .filter(|r| !others.contains(r))
                .collect();
            let new: Vec<_> = others
                .iter()
                .filter(kept)
                .filter(|r| !before_others.contains(r))
                .collect();
            assert!(
                gone.is_empty() && new.is_empty(),
                "{table}: rows of others changed: gone {gone:?}, new {new:?}"
            );
        }
    }
    let hits = files_mentioning(dir, values);
    assert!(hits.is_empty(), "files still hold the person: {hits:?}");
    let pending = dir.join("data/_privacy/pending");
    assert!(
        !pending.exists() || std::fs::read_dir(&pending).unwrap().next().is_none(),
        "the erasure plan is deleted once done"
    );
}

#[test]
fn forget_erases_a_person_everywhere_and_nothing_else() {
    let (_tmp, dir, email) = prepared(7);
    // Someone else logs in on the person's device: the link is refused (one user id per
    // profile), so a route pairs the person's anonymous id with the other profile.
    let shown: Value = serde_json::from_str(&ok(
        tribe(&dir).args(["privacy", "show", &email, "--format", "json"])
    ))
    .unwrap();
    let anon = shown["tables"]["profile_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key_type"] == "anonymous_id")
        .expect("the person has a device")["key"]
        .as_str()
        .unwrap()
        .to_string();
    // They also use their own device, so they stay someone after the erasure.
    let login = format!(
        "{}\n{}\n",
        r#"{"type":"identify","messageId":"own-login","userId":"someone-else-42","anonymousId":"own-device-42","timestamp":"2026-06-19T10:00:00Z"}"#,
        format_args!(
            r#"{{"type":"identify","messageId":"shared-login","userId":"someone-else-42","anonymousId":"{anon}","timestamp":"2026-06-20T10:00:00Z"}}"#
        )
    );
    ingest(&dir, &write(&dir, "shared.jsonl", &login));
    ok(tribe(&dir).args(["resolve"]));
    let owner = sql(
        &dir,
        &format!(
            "select profile_id from profile_routes where anonymous_id = '{anon}' and user_id = 'someone-else-42'"
        ),
    );
    assert_eq!(owner.len(), 1);
    assert_ne!(owner[0], shown["profile_id"].as_str().unwrap());
    let values = values_of(&dir, &email);
    let before = rows_by_mention(&dir, &values);
    // The checks can fail: before the erasure the person is in tables and files.
    for table in [
        "events",
        "profiles",
        "identities",
        "crm",
        "segment_members",
        "traits",
    ] {
        assert!(
            !before[table].0.is_empty(),
            "{table} mentions the person first"
        );
    }
    let files = files_mentioning(&dir, &values);
    assert!(
        files.iter().any(|f| f.contains("export_state")),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.contains("audiences") || f.contains("vip_google")),
        "{files:?}"
    );
    // An older table version (before a compaction) also holds the person.
    ok(tribe(&dir).args(["maintain", "--table", "events"]));

    let report: Value = serde_json::from_str(&ok(tribe(&dir).args([
        "privacy",
        "forget",
        &email,
        "--reason",
        "ticket 123",
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(report["outcome"], "completed");
    assert!(report["rows_deleted"].as_u64().unwrap() > 10);
    assert!(
        report["export_rows_removed"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_erased(&dir, &values, &before, &[]);

    // Manifests still describe their files.
    let manifests = python_run(&format!(
        r#"
import hashlib, json, os
bad = []
for root, dirs, files in os.walk({root:?}):
    if "manifest.json" in files:
        m = json.load(open(os.path.join(root, "manifest.json")))
        for f in m["files"]:
            data = open(os.path.join(root, f["name"]), "rb").read()
            if hashlib.sha256(data).hexdigest() != f["sha256"] or len(data) != f["bytes"]:
                bad.append(f["name"])
print(json.dumps(bad))
"#,
        root = dir.join("data").display().to_string()
    ));
    assert_eq!(String::from_utf8(manifests).unwrap().trim(), "[]");

    // The log says what happened without saying who.
    let log = sql(
        &dir,
        "select action, outcome, reason, identifier_hash, details from privacy_log",
    );
    assert!(
        log.iter()
            .any(|r| r.starts_with("forget,completed,ticket 123,")),
        "{log:?}"
    );
    for row in &log {
        for v in &values {
            assert!(!row.contains(v.as_str()), "the log holds {v}");
        }
    }
    let mine = ok(tribe(&dir).args(["privacy", "log", "--identifier", &email, "--format", "csv"]));
    assert!(
        mine.lines().count() >= 3,
        "show, started, completed: {mine}"
    );

    // Forgetting again finds nothing; resolving again keeps everyone else as they were, but
    // for the one who logged in on the person's device: that login (it carried the person's
    // device id) is gone from their history.
    let again: Value = serde_json::from_str(&ok(
        tribe(&dir).args(["privacy", "forget", &email, "--format", "json"])
    ))
    .unwrap();
    assert_eq!(again["outcome"], "not found", "{again}");
    let profiles = sql_count(&dir, "select count(*) from profiles");
    let run: Value =
        serde_json::from_str(&ok(tribe(&dir).args(["resolve", "--format", "json"]))).unwrap();
    assert_eq!(
        run["mode"], "incremental",
        "an erasure keeps resolution incremental: {run}"
    );
    assert_eq!(sql_count(&dir, "select count(*) from profiles"), profiles);
    assert_erased(&dir, &values, &before, &["someone-else-42", &owner[0]]);
}

#[test]
fn a_killed_erasure_completes_when_run_again() {
    let (_tmp, dir, email) = prepared(11);
    let values = values_of(&dir, &email);
    let before = rows_by_mention(&dir, &values);
    for step in ["forget-deleted-events", "export-files"] {
        let mut child = tribe(&dir)
            .args(["privacy", "forget", &email])
            .env("TRIBE_TEST_PAUSE_AT", step)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = lines.next().expect("it pauses").unwrap();
        assert_eq!(line, format!("paused at {step}"));
        // kill -9: no clean-up of any kind.
        child.kill().unwrap();
        child.wait().unwrap();
        if step == "forget-deleted-events" {
            assert_eq!(
                sql_count(
                    &dir,
                    &format!("select count(*) from profiles where email = '{email}'")
                ),
                1,
                "stopped half-way: the profile is still there"
            );
            // Meanwhile the tombstones already keep the person out of new data.
            let user = sql(
                &dir,
                &format!("select user_id from profiles where email = '{email}'"),
            );
            let file = write(
                &dir,
                "late.jsonl",
                &common::track(
                    "late-1",
                    &user[0],
                    "Page Viewed",
                    "2026-06-01T10:00:00Z",
                    "{}",
                ),
            );
            let ingested: Value = ingest(&dir, &file);
            assert_eq!(ingested["suppressed"], 1, "{ingested}");
            assert_eq!(ingested["inserted"], 0, "{ingested}");
        }
    }
    let report: Value = serde_json::from_str(&ok(
        tribe(&dir).args(["privacy", "forget", &email, "--format", "json"])
    ))
    .unwrap();
    assert_eq!(report["outcome"], "completed", "{report}");
    assert_eq!(report["resumed"], true, "{report}");
    assert_erased(&dir, &values, &before, &[]);
}

#[test]
fn tombstones_keep_the_person_out_unless_new_consent_may_override() {
    let (_tmp, dir) = demo(200, 5);
    let row = sql(
        &dir,
        "select email, user_id from profiles where email is not null and user_id is not null \
         order by profile_id limit 1",
    );
    let (email, user) = row[0].split_once(',').unwrap();
    ok(tribe(&dir).args(["privacy", "forget", email]));
    // A consent decision would bring the person back as a profile: refused.
    let out = common::run(tribe(&dir).args([
        "privacy",
        "consent",
        email,
        "--type",
        "email",
        "--channel",
        "email",
        "--deny",
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forgotten"));
    let identify = |id: &str, ts: &str, opt_in: bool| {
        format!(
            r#"{{"type":"identify","messageId":"{id}","userId":"new-{id}","anonymousId":"anon-{id}","timestamp":"{ts}","traits":{{"email":"  {}  ","email_opt_in":{opt_in}}}}}"#,
            email.to_uppercase()
        )
    };
    let lines = [
        common::track(
            "old-1",
            user,
            "Order Completed",
            "2026-01-02T10:00:00Z",
            r#"{"revenue":5}"#,
        ),
        identify("new-1", "2099-01-01T00:00:00Z", false),
        identify("new-2", "2099-01-02T00:00:00Z", true),
    ]
    .join("\n");
    let file = write(&dir, "again.jsonl", &lines);
    let report: Value = ingest(&dir, &file);
    assert_eq!(report["suppressed"], 3, "{report}");
    assert_eq!(report["inserted"], 0, "{report}");
    let mention = format!(
        "select count(*) from events where user_id = '{user}' or lower(traits) like '%{email}%'"
    );
    assert_eq!(sql_count(&dir, &mention), 0);

    // The policy lets new consent bring the person back, from that consent on.
    let config = dir.join("tribe.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "new_consent_overrides = false",
            "new_consent_overrides = true",
        ),
    )
    .unwrap();
    let report: Value = ingest(&dir, &file);
    assert_eq!(report["inserted"], 1, "only the opt-in is kept: {report}");
    assert_eq!(report["suppressed"], 2, "{report}");
    let later = write(
        &dir,
        "later.jsonl",
        &[
            identify("new-3", "2099-02-01T00:00:00Z", false),
            common::track(
                "old-2",
                user,
                "Order Completed",
                "2026-01-03T10:00:00Z",
                "{}",
            ),
        ]
        .join("\n"),
    );
    let report: Value = ingest(&dir, &later);
    assert_eq!(
        report["inserted"], 1,
        "after the consent, new events count: {report}"
    );
    assert_eq!(report["suppressed"], 1, "older data stays out: {report}");
    let log = sql(
        &dir,
        "select action, outcome from privacy_log where action = 'lift'",
    );
    assert_eq!(log, vec!["lift,tombstone lifted".to_string()]);
}

#[test]
fn consent_decisions_latest_wins_and_segments_and_exports_see_them() {
    let (_tmp, dir) = demo(200, 3);
    let row = sql(
        &dir,
        "select email, profile_id from profiles where consent_email is true and email is not null \
         order by profile_id limit 1",
    );
    let (email, pid) = row[0].split_once(',').unwrap();
    let denied: Value = serde_json::from_str(&ok(tribe(&dir).args([
        "privacy",
        "consent",
        email,
        "--channel",
        "email",
        "--deny",
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(denied["profile_id"], pid);
    assert_eq!(denied["granted"], false);
    let consent = |channel: &str| {
        sql(
            &dir,
            &format!(
                "select granted, source from profile_consent where profile_id = '{pid}' and channel = '{channel}'"
            ),
        )
    };
    assert_eq!(consent("email"), vec!["false,privacy".to_string()]);
    assert_eq!(
        sql(
            &dir,
            &format!("select consent_email from profiles where profile_id = '{pid}'")
        ),
        vec!["false".to_string()]
    );
    // An older grant does not beat the newer denial.
    ok(tribe(&dir).args([
        "privacy",
        "consent",
        email,
        "--channel",
        "email",
        "--grant",
        "--at",
        "2020-01-01",
        "--source",
        "paper form",
    ]));
    assert_eq!(consent("email"), vec!["false,privacy".to_string()]);
    // A new channel, and a segment over it.
    ok(tribe(&dir).args([
        "privacy",
        "consent",
        pid,
        "--channel",
        "analytics",
        "--grant",
    ]));
    assert_eq!(consent("analytics"), vec!["true,privacy".to_string()]);
    write(
        &dir,
        "queries/consent.seg",
        "segment analytics_ok = consent.analytics\nsegment email_ok = consent.email\n",
    );
    let members = ok(tribe(&dir).args(["segment", "run", "analytics_ok", "--format", "csv"]));
    assert!(members.contains(pid), "{members}");
    let members = ok(tribe(&dir).args(["segment", "run", "email_ok", "--format", "csv"]));
    assert!(!members.contains(pid), "{members}");
    // An export that needs e-mail consent leaves the person out while they deny it, and
    // takes them once a newer decision grants it.
    write(
        &dir,
        "exports/consent_check.toml",
        "segment = \"analytics_ok\"\nconsent = \"email\"\ncolumns = [\"profile_id\"]\n",
    );
    let audience = || {
        let run: Value = serde_json::from_str(&ok(tribe(&dir).args([
            "export",
            "run",
            "consent_check",
            "--format",
            "json",
        ])))
        .unwrap();
        let folder = run["destination"]
            .as_str()
            .unwrap()
            .trim_start_matches("file://");
        std::fs::read_to_string(Path::new(folder).join("audience-00000.csv")).unwrap()
    };
    assert!(
        !audience().contains(pid),
        "denied e-mail consent, not exported"
    );
    ok(tribe(&dir).args(["privacy", "consent", pid, "--channel", "email", "--grant"]));
    assert!(audience().contains(pid), "granted again, exported");
    // Unknown identifiers need their type.
    let out = common::run(tribe(&dir).args([
        "privacy",
        "consent",
        "nobody@example.com",
        "--channel",
        "email",
        "--deny",
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--type"));
    let log = sql(
        &dir,
        "select action, outcome from privacy_log order by logged_at",
    );
    assert_eq!(log[0], "consent,denied email");
}

#[test]
fn show_and_export_return_every_row_one_section_per_table() {
    let (tmp, dir, email) = prepared(5);
    let out = tmp.path().join("person.json");
    let summary: Value = serde_json::from_str(&ok(tribe(&dir).args([
        "privacy",
        "export",
        &email,
        "--out",
        out.to_str().unwrap(),
        "--reason",
        "access request 9",
        "--format",
        "json",
    ])))
    .unwrap();
    let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let pid = doc["profile_id"].as_str().unwrap();
    let tables = doc["tables"].as_object().unwrap();
    for t in [
        "events",
        "profiles",
        "identities",
        "crm",
        "traits",
        "segment_members",
        "export_state",
    ] {
        assert!(tables.contains_key(t), "section {t} in {:?}", tables.keys());
    }
    assert_eq!(
        tables["events"].as_array().unwrap().len() as i64,
        sql_count(
            &dir,
            &format!("select count(*) from profile_events where profile_id = '{pid}'")
        )
    );
    assert_eq!(
        summary["rows"].as_u64().unwrap() as usize,
        tables
            .values()
            .map(|v| v.as_array().unwrap().len())
            .sum::<usize>()
    );
    let shown = ok(tribe(&dir).args(["privacy", "show", &email]));
    assert!(
        shown.contains("events (") && shown.contains("profiles (1 rows)"),
        "{shown}"
    );
    let unknown = ok(tribe(&dir).args(["privacy", "show", "nobody@example.com"]));
    assert!(unknown.contains("nothing is stored"), "{unknown}");
    let log = sql(
        &dir,
        "select action, reason from privacy_log where action = 'export'",
    );
    assert_eq!(log, vec!["export,access request 9".to_string()]);
}
