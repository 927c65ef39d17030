//! Audience exports and schedules, run through the real `tribe` binary: platform presets checked
//! against hashes computed with `sha256sum`, consent and suppression, diffs, formats and file
//! splitting, crashes (kill -9) at every step of a run, concurrent schedulers, an unreachable
//! destination, and S3 destinations on the loopback S3 server.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use serde_json::Value;
use sha2::Digest;

const SEGMENTS: &str = "segment everyone = is_known = true\n\
                        segment nobody = country = \"XX\"\n\
                        segment americans = country = \"us\"\n";

fn identify(id: &str, user: &str, ts: &str, traits: Value) -> String {
    serde_json::json!({"type": "identify", "messageId": id, "userId": user, "timestamp": ts,
        "traits": traits})
    .to_string()
}

/// Four people: ana and bob agreed to ads, cyd refused, dan never said.
fn people() -> Vec<String> {
    vec![
        identify(
            "m1",
            "u1",
            "2026-05-01T10:00:00Z",
            serde_json::json!({"email": " Ana.Lopez@GMail.com ", "phone": "+49 1512 3456789",
                "first_name": " Ana-Maria ", "last_name": "O'Neil", "country": "de", "zip": "10115",
                "ads_opt_in": true}),
        ),
        identify(
            "m2",
            "u2",
            "2026-05-01T11:00:00Z",
            serde_json::json!({"email": "bob@example.com", "phone": "+1 650 253 0000",
                "first_name": "Bob", "country": "us", "zip": "94103-1234", "ads_opt_in": "yes"}),
        ),
        identify(
            "m3",
            "u3",
            "2026-05-01T12:00:00Z",
            serde_json::json!({"email": "cyd@example.com", "ads_opt_in": false}),
        ),
        identify(
            "m4",
            "u4",
            "2026-05-01T13:00:00Z",
            serde_json::json!({"email": "dan@example.com"}),
        ),
    ]
}

/// A workspace with the four people resolved and the test segments.
fn setup(backend: Backend, exports: &str) -> tempfile::TempDir {
    let ws = workspace(
        backend,
        &format!("[identity]\nconsent = {{ ads = \"ads_opt_in\" }}\n\n{exports}"),
    );
    let dir = ws.path();
    std::fs::create_dir_all(dir.join("queries")).unwrap();
    write(&dir.join("queries"), "test.seg", SEGMENTS);
    ingest(dir, "people.jsonl", &people());
    ok(tribe(dir).args(["resolve"]));
    ws
}

fn ingest(dir: &Path, name: &str, lines: &[String]) {
    let file = write(dir, name, &(lines.join("\n") + "\n"));
    ok(tribe(dir).args(["ingest", "events", file.to_str().unwrap()]));
}

/// Ana withdraws her consent to ads.
fn withdraw_ana(dir: &Path) {
    ingest(
        dir,
        "withdraw.jsonl",
        &[identify(
            "m5",
            "u1",
            "2026-06-01T10:00:00Z",
            serde_json::json!({"ads_opt_in": false}),
        )],
    );
    ok(tribe(dir).args(["resolve"]));
}

fn run_export(dir: &Path, name: &str) -> Value {
    let out = ok(tribe(dir).args([
        "export",
        "run",
        name,
        "--as-of",
        "2026-06-30",
        "--format",
        "json",
    ]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The local folder of a run's destination.
fn folder(outcome: &Value) -> PathBuf {
    let url = url::Url::parse(outcome["destination"].as_str().unwrap()).unwrap();
    url.to_file_path().unwrap()
}

fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

const EXPORTS: &str = r#"
[exports.google]
segment = "everyone"
preset = "google_customer_match"
consent = "ads"

[exports.meta]
segment = "everyone"
preset = "meta_custom_audience"
consent = "ads"
suppress = "americans"

[exports.plain]
segment = "everyone"
columns = ["profile_id", { from = "email", as = "mail", normalize = "email", hash = "sha256" }, "country"]
format = "jsonl"
consent = "ads"
max_rows_per_file = 1

[exports.empty]
segment = "nobody"
columns = ["email"]
format = "parquet"

[exports.sms]
segment = "everyone"
columns = ["email"]
consent = "sms"
"#;

#[test]
fn presets_hash_exactly_and_consent_withdrawal_becomes_a_remove() {
    let ws = setup(Backend::Local, EXPORTS);
    let dir = ws.path();

    // Google Customer Match: Gmail dots removed, E.164 phone, lower-cased names, all SHA-256;
    // country and zip in clear. Only the two who agreed to ads.
    let google = run_export(dir, "google");
    assert_eq!(google["status"], "delivered");
    assert_eq!(
        (google["audience"].as_u64(), google["adds"].as_u64()),
        (Some(2), Some(2))
    );
    let g = folder(&google);
    let (header, rows) = csv_rows(&g.join("audience-00000.csv"));
    assert_eq!(
        header,
        [
            "Email",
            "Phone",
            "First Name",
            "Last Name",
            "Country",
            "Zip"
        ]
    );
    let ana_google = vec![
        // analopez@gmail.com
        "40a7a591b586da8ea75d049e8a9dfb984c075840dd3e9fed2e91a31c0dc2c51c".to_string(),
        // +4915123456789
        "663a4322addcdcc2be9435bfd2505066dc1048b89d33e48f363119f18bdd71e8".into(),
        // ana-maria
        "b893a9614ce900c05ed7d72211ece456bbdc76d3349d9d03781fe7c7896fbf57".into(),
        // o'neil
        "eb1aed4f494ca276a88d3161252e48e0fe703f32666fe44fe4652f660b82cda4".into(),
        "DE".into(),
        "10115".into(),
    ];
    let bob_google = vec![
        // bob@example.com
        "5ff860bf1190596c7188ab851db691f0f3169c453936e9e1eba2f9a47f7a0018".to_string(),
        // +16502530000
        "3ad9f10d73829a714b1383221691d4dbf08484f3ceeae884f53053a1c7bb0a92".into(),
        // bob
        "81b637d8fcd2c6da6359e6963113a1170de795e4b725b84d1e0b4cfd9ec58ce9".into(),
        String::new(),
        "US".into(),
        "94103-1234".into(),
    ];
    let got: BTreeSet<Vec<String>> = rows.into_iter().collect();
    assert_eq!(
        got,
        BTreeSet::from([ana_google.clone(), bob_google.clone()])
    );

    // Meta: dots kept, digits-only phone, letters-only names, hashed country and zip; bob is
    // suppressed (americans).
    let meta = run_export(dir, "meta");
    let (header, rows) = csv_rows(&folder(&meta).join("audience-00000.csv"));
    assert_eq!(header, ["email", "phone", "fn", "ln", "country", "zip"]);
    assert_eq!(
        rows,
        [[
            // ana.lopez@gmail.com
            "0f3eeee33c9320756090d5cf8880492aa3553f0231b24a39d7fcfd12eeb2cd2a",
            // 4915123456789
            "c0f8f0bebbbac96451ee8d8def84a02ae9e34c877775437cb9d458328315afa7",
            // anamaria
            "246b7556cc1e9da32673b5c1ca930f53b6cc1393681f2608bafc39308d66f876",
            // oneil
            "67a42a846e98e3c1a96cd6ba14883a5ea05990cd93964ce8b832aa9497ca785c",
            // de
            "959a45d44e6fcf58361ed004681556fe50129f2109e817dec098c00c9e5d2578",
            // 10115
            "ac7bb74de6884ffce919c15fef4193749d4588026c643973946713ac46da540d",
        ]]
    );

    // JSON lines split at one row per file; the manifest lists each file with its checksum.
    let plain = run_export(dir, "plain");
    let p = folder(&plain);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(p.join("manifest.json")).unwrap()).unwrap();
    let audience_files: Vec<&Value> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "audience")
        .collect();
    assert_eq!(audience_files.len(), 2);
    for f in manifest["files"].as_array().unwrap() {
        let bytes = std::fs::read(p.join(f["name"].as_str().unwrap())).unwrap();
        assert_eq!(f["sha256"].as_str().unwrap(), sha256_hex(&bytes));
        assert_eq!(f["bytes"].as_u64().unwrap(), bytes.len() as u64);
    }
    let line = std::fs::read_to_string(p.join("audience-00000.jsonl")).unwrap();
    let row: Value = serde_json::from_str(line.trim()).unwrap();
    assert!(row["profile_id"].is_string());
    // normalize = "email", hash = "sha256": the generic option, without Google's Gmail rule.
    let mails: BTreeSet<String> = (0..2)
        .map(|i| {
            let text = std::fs::read_to_string(p.join(format!("audience-0000{i}.jsonl"))).unwrap();
            let row: Value = serde_json::from_str(text.trim()).unwrap();
            row["mail"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        mails,
        BTreeSet::from([
            // ana.lopez@gmail.com
            "0f3eeee33c9320756090d5cf8880492aa3553f0231b24a39d7fcfd12eeb2cd2a".to_string(),
            // bob@example.com
            "5ff860bf1190596c7188ab851db691f0f3169c453936e9e1eba2f9a47f7a0018".into(),
        ])
    );

    // An empty segment still delivers: an empty Parquet file and a manifest saying 0.
    let empty = run_export(dir, "empty");
    assert_eq!(empty["audience"], 0);
    let e = folder(&empty);
    assert!(e.join("audience-00000.parquet").exists());
    assert_eq!(
        sql_count(
            dir,
            &format!(
                "select count(*) from '{}'",
                e.join("audience-00000.parquet").display()
            )
        ),
        0
    );

    // A channel nobody has stated consent for exports nobody, and says so.
    let out = run(tribe(dir).args(["export", "run", "sms", "--format", "json"]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody is exported"));

    // Ana withdraws consent: she is not in the next audience, and her delivered row is removed.
    withdraw_ana(dir);
    let second = run_export(dir, "google");
    assert_eq!(
        (
            second["audience"].as_u64(),
            second["adds"].as_u64(),
            second["removes"].as_u64()
        ),
        (Some(1), Some(0), Some(1))
    );
    assert_eq!(second["previous_run"], google["run_id"]);
    let s = folder(&second);
    assert_eq!(csv_rows(&s.join("audience-00000.csv")).1, [bob_google]);
    assert_eq!(csv_rows(&s.join("removes-00000.csv")).1, [ana_google]);
    assert!(csv_rows(&s.join("adds-00000.csv")).1.is_empty());

    // History and SQL see the runs.
    let history = ok(tribe(dir).args(["export", "history", "google", "--format", "json"]));
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert_eq!(
        sql_count(
            dir,
            "select count(*) from export_runs where export = 'google' and status = 'delivered'"
        ),
        2
    );
    let list = ok(tribe(dir).args(["export", "list", "--format", "csv"]));
    assert!(
        list.lines().any(|l| l.starts_with("google,everyone,csv")),
        "{list}"
    );
}

#[test]
fn bad_export_definitions_and_names_say_what_is_wrong() {
    let ws = setup(
        Backend::Local,
        "[exports.typo]\nsegment = \"everyone\"\ncolumns = [\"emial\"]\n",
    );
    let dir = ws.path();
    let out = run(tribe(dir).args(["export", "run", "typo"]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean \"email\""), "{err}");
    let out = run(tribe(dir).args(["export", "run", "tpyo"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `typo`"));
    // Nothing was written for a run that could not start.
    assert!(!dir.join("data/audiences").exists());
    // Definitions in exports/*.toml are read with those of tribe.toml, and checked when the
    // workspace opens.
    std::fs::create_dir_all(dir.join("exports")).unwrap();
    write(
        &dir.join("exports"),
        "from_file.toml",
        "segment = \"everyone\"\ncolumns = [\"email\"]\n",
    );
    let o = run_export(dir, "from_file");
    assert_eq!(o["audience"], 4);
    write(
        &dir.join("exports"),
        "bad.toml",
        "segment = \"everyone\"\ncolumns = [\"email\"]\ndestination = \"out/\"\n",
    );
    let out = run(tribe(dir).args(["export", "list"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("{run}"), "{err}");
}

/// Starts `tribe export run NAME` paused at `step`, waits until it gets there, and kills it
/// with SIGKILL.
fn crash_at(dir: &Path, name: &str, step: &str) {
    let mut child = tribe(dir)
        .args(["export", "run", name, "--as-of", "2026-06-30"])
        .env("TRIBE_TEST_PAUSE_AT", step)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let reached = lines.any(|l| l.is_ok_and(|l| l.contains(&format!("paused at {step}"))));
    assert!(reached, "the run never reached {step}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn a_run_killed_at_any_step_is_delivered_exactly_once_by_the_next_run() {
    let steps = ["claimed", "first-file", "files", "manifest"];
    let exports: String = steps
        .iter()
        .map(|s| {
            format!(
                "[exports.crash_{}]\nsegment = \"everyone\"\npreset = \"google_customer_match\"\nconsent = \"ads\"\n\n",
                s.replace('-', "_")
            )
        })
        .collect();
    let ws = setup(Backend::Local, &exports);
    let dir = ws.path();
    for step in steps {
        run_export(dir, &format!("crash_{}", step.replace('-', "_")));
    }
    withdraw_ana(dir);
    for step in steps {
        let name = format!("crash_{}", step.replace('-', "_"));
        crash_at(dir, &name, step);
        let again = run_export(dir, &name);
        let want = if step == "manifest" {
            "recovered"
        } else {
            "delivered"
        };
        assert_eq!(again["status"], want, "{step}");
        assert_eq!(
            (
                again["audience"].as_u64(),
                again["adds"].as_u64(),
                again["removes"].as_u64()
            ),
            (Some(1), Some(0), Some(1)),
            "{step}: diffs against the run before the crash"
        );
        let delivered = sql(
            dir,
            &format!(
                "select run_id from export_runs where export = '{name}' and status = 'delivered'"
            ),
        );
        assert_eq!(delivered.len(), 2, "{step}: {delivered:?}");
        // Every run folder left holds a delivered run: the crashed one's files were removed
        // (or, after the manifest, it is the delivered run).
        let runs_dir = dir.join("data/audiences").join(&name);
        let folders: Vec<PathBuf> = std::fs::read_dir(&runs_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| std::fs::read_dir(p).unwrap().next().is_some())
            .collect();
        assert_eq!(folders.len(), 2, "{step}: {folders:?}");
        assert!(folders.iter().all(|f| f.join("manifest.json").exists()));
        let statuses = sql(
            dir,
            &format!("select status from export_runs where export = '{name}' order by recorded_at"),
        );
        let abandoned = statuses.iter().filter(|s| *s == "abandoned").count();
        assert_eq!(
            abandoned,
            usize::from(step != "manifest"),
            "{step}: {statuses:?}"
        );
    }
}

const DAILY: &str =
    "[exports.daily]\nsegment = \"everyone\"\ncolumns = [\"email\"]\nschedule = \"0 0 * * *\"\n";

#[test]
fn two_schedulers_deliver_a_scheduled_time_once_and_a_second_pass_finds_nothing_due() {
    let ws = setup(Backend::Local, DAILY);
    let dir = ws.path();
    let children: Vec<_> = (0..2)
        .map(|_| {
            tribe(dir)
                .args(["schedule", "run", "--format", "json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outcomes = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        outcomes.extend(v.as_array().unwrap().iter().map(|r| r["outcome"].clone()));
    }
    assert_eq!(
        outcomes.iter().filter(|o| *o == "delivered").count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| ["delivered", "already delivered", "in progress"]
                .contains(&o.as_str().unwrap())),
        "{outcomes:?}"
    );
    let rows = sql(
        dir,
        "select scheduled_for, as_of from export_runs where status = 'delivered'",
    );
    assert_eq!(rows.len(), 1);
    let midnight = chrono::Utc::now().format("%Y-%m-%dT00:00:00").to_string();
    assert!(rows[0].starts_with(&midnight), "{rows:?}");
    let again = ok(tribe(dir).args(["schedule", "run"]));
    assert_eq!(again.trim(), "nothing is due");
}

#[test]
fn an_unreachable_destination_fails_with_the_reason_and_is_retried_until_attempts_run_out() {
    let exports = "[exports.broken]\nsegment = \"everyone\"\ncolumns = [\"email\"]\n\
        schedule = \"0 0 * * *\"\ndestination = \"s3://nowhere/{run}/\"\n\
        max_attempts = 2\nretry_seconds = 0\n";
    let ws = setup(Backend::Local, exports);
    let dir = ws.path();
    // Port 9 (discard) on loopback: nothing listens there.
    let schedule = || {
        let mut c = tribe(dir);
        c.args(["schedule", "run", "--format", "json"])
            .env("AWS_ENDPOINT", "http://127.0.0.1:9")
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("AWS_REGION", "us-east-1");
        c
    };
    for attempt in 1..=2 {
        let out = run(&mut schedule());
        assert_eq!(out.status.code(), Some(1), "attempt {attempt}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["outcome"], "failed");
        assert_eq!(v[0]["attempt"], attempt);
        assert!(v[0]["detail"].as_str().unwrap().contains("nowhere"), "{v}");
    }
    let rows = sql(
        dir,
        "select attempt, retry_at is null, length(error) > 0 from export_runs where status = 'failed' order by attempt",
    );
    assert_eq!(rows, ["1,false,true", "2,true,true"]);
    let out = run(&mut schedule());
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    // The data the export read is untouched.
    assert_eq!(sql_count(dir, "select count(*) from profiles"), 4);
}

/// Objects below a prefix of the test bucket, with their bytes, through boto3.
fn s3_objects(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let endpoint = s3_server();
    let script = format!(
        "import boto3, json\n\
         s3 = boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
         out = []\n\
         for o in s3.list_objects_v2(Bucket='tribe-test', Prefix='{prefix}').get('Contents', []):\n\
         \x20   body = s3.get_object(Bucket='tribe-test', Key=o['Key'])['Body'].read()\n\
         \x20   out.append([o['Key'], body.hex()])\n\
         print(json.dumps(out))\n"
    );
    let stdout = python_run(&script);
    let v: Vec<(String, String)> = serde_json::from_slice(&stdout).unwrap();
    v.into_iter()
        .map(|(k, b)| (k, hex::decode(b).unwrap()))
        .collect()
}

#[test]
fn exports_land_on_s3_complete_with_their_manifest() {
    let prefix = format!("outbound-{}", std::process::id());
    let exports = format!(
        "[exports.to_s3]\nsegment = \"everyone\"\npreset = \"meta_custom_audience\"\nconsent = \"ads\"\n\
         destination = \"s3://tribe-test/{prefix}/{{export}}/{{run}}/\"\n\n\
         [exports.in_workspace]\nsegment = \"everyone\"\ncolumns = [\"email\"]\nformat = \"parquet\"\n"
    );
    // The workspace itself is on S3 too: its export state and default destination live there.
    let ws = setup(Backend::S3, &exports);
    let dir = ws.path();
    for name in ["to_s3", "in_workspace"] {
        let outcome = run_export(dir, name);
        let url = outcome["destination"].as_str().unwrap().to_string();
        assert!(url.starts_with("s3://tribe-test/"), "{url}");
        let key_prefix = url.trim_start_matches("s3://tribe-test/");
        let objects = s3_objects(key_prefix);
        let manifest = objects
            .iter()
            .find(|(k, _)| k.ends_with("manifest.json"))
            .expect("a manifest");
        let manifest: Value = serde_json::from_slice(&manifest.1).unwrap();
        let files = manifest["files"].as_array().unwrap();
        assert_eq!(objects.len(), files.len() + 1, "{name}: files and manifest");
        for f in files {
            let key = format!("{key_prefix}{}", f["name"].as_str().unwrap());
            let (_, bytes) = objects
                .iter()
                .find(|(k, _)| *k == key)
                .expect("listed file");
            assert_eq!(f["sha256"].as_str().unwrap(), sha256_hex(bytes));
        }
        assert_eq!(manifest["audience"], if name == "to_s3" { 2 } else { 4 });
    }
    // A second run diffs against the state the first left on S3.
    withdraw_ana(dir);
    let second = run_export(dir, "to_s3");
    assert_eq!(
        (second["adds"].as_u64(), second["removes"].as_u64()),
        (Some(0), Some(1))
    );
}

#[test]
fn serve_scheduler_fires_due_exports_and_logs_each_run() {
    let ws = setup(Backend::Local, DAILY);
    let dir = ws.path();
    let mut child = tribe(dir)
        .args(["serve", "--scheduler"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = BufReader::new(stdout).lines().next();
    child.kill().unwrap();
    child.wait().unwrap();
    let line: Value = serde_json::from_str(&first.expect("a log line").unwrap()).unwrap();
    assert_eq!(line["export"], "daily");
    assert_eq!(line["outcome"], "delivered");
    assert_eq!(
        sql_count(
            dir,
            "select count(*) from export_runs where status = 'delivered'"
        ),
        1
    );
}

#[test]
fn the_demo_exports_run_as_shipped_and_respect_consent() {
    let (_tmp, dir) = demo(300, 5);
    let list = ok(tribe(&dir).args(["export", "list", "--format", "json"]));
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["churn_risk_meta", "vip_google", "winback_email"]);
    for name in &names {
        let o = run_export(&dir, name);
        assert_eq!(o["status"], "delivered", "{o}");
    }
    // The plain CSV went to the workspace's outbox; everyone in it agreed to e-mail.
    let winback = std::fs::read_dir(dir.join("outbox/winback_email"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let run = std::fs::read_dir(&winback)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = run.join("audience-00000.csv");
    let query = |cond: &str| {
        format!(
            "select count(*) from '{}' a join profiles p using (profile_id) where {cond}",
            file.display()
        )
    };
    assert!(sql_count(&dir, &query("true")) > 0);
    assert_eq!(sql_count(&dir, &query("p.consent_email is not true")), 0);
}
