//! Identity resolution through the real binary: quality on demo data, incremental runs equal
//! full ones, over-merging rules, stable ids with merges and splits, trait merge rules, and
//! the same on a real S3 server.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Backend, ok, run, sql, sql_count, tribe, workspace, write};
use serde_json::Value;

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = ok(tribe(dir).args(&all));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn identify(id: &str, user: Option<&str>, anon: Option<&str>, ts: &str, traits: &str) -> String {
    let mut m = serde_json::json!({"type": "identify", "messageId": id, "timestamp": ts,
        "traits": serde_json::from_str::<Value>(traits).unwrap()});
    if let Some(u) = user {
        m["userId"] = u.into();
    }
    if let Some(a) = anon {
        m["anonymousId"] = a.into();
    }
    m.to_string()
}

fn page(id: &str, anon: &str, ts: &str) -> String {
    format!(
        r#"{{"type":"page","messageId":"{id}","anonymousId":"{anon}","name":"Home","timestamp":"{ts}"}}"#
    )
}

fn ingest(dir: &Path, name: &str, lines: &[String]) {
    let file = write(dir, name, &(lines.join("\n") + "\n"));
    ok(tribe(dir).args(["ingest", "events", file.to_str().unwrap()]));
}

/// profile id by identifier, from the identities table.
fn profile_of(dir: &Path, ty: &str, value: &str) -> String {
    let rows = sql(
        dir,
        &format!(
            "select profile_id from identities where id_type = '{ty}' and id_value = '{value}'"
        ),
    );
    assert_eq!(rows.len(), 1, "{ty} {value}: {rows:?}");
    rows[0].clone()
}

#[test]
fn demo_profiles_match_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    ok(tribe(dir.path()).args(["demo", "d", "--people", "400", "--seed", "7"]));
    let ws = dir.path().join("d");
    // The demo resolved once already.
    assert_eq!(sql(&ws, "select mode from resolve_runs"), vec!["full"]);
    let scores = json(&ws, &["resolve", "--evaluate", "truth.csv", "--no-run"]);
    let both = json(&ws, &["resolve", "--evaluate", "truth.csv"]);
    assert_eq!(
        both["evaluation"]["precision"], scores["precision"],
        "{both}"
    );
    assert_eq!(both["resolve"]["mode"], "incremental", "{both}");
    let (precision, recall) = (
        scores["precision"].as_f64().unwrap(),
        scores["recall"].as_f64().unwrap(),
    );
    assert!(precision >= 0.999, "precision {precision}: {scores}");
    assert!(recall >= 0.99, "recall {recall}: {scores}");
    assert!(scores["found"].as_u64().unwrap() > 0);

    // Every event that carries an identifier has a profile.
    assert_eq!(
        sql_count(
            &ws,
            "select count(*) from profile_events where profile_id is null"
        ),
        0
    );
    let events = sql_count(&ws, "select count(*) from events");
    assert_eq!(
        sql_count(&ws, "select count(*) from profile_events"),
        events
    );
    // Profile event counts add up to the events.
    assert_eq!(sql_count(&ws, "select sum(events) from profiles"), events);

    // A noisy spelling of an e-mail from the truth finds its person.
    let rows = sql(
        &ws,
        "select id_value from 'truth.csv' where id_type = 'email' and id_value <> lower(trim(id_value)) limit 1",
    );
    let noisy = &rows[0];
    let view = json(&ws, &["profile", "show", noisy]);
    let ids: Vec<&str> = view["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id_value"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&noisy.trim().to_lowercase().as_str()),
        "{view}"
    );
    assert!(
        !view["recent_events"].as_array().unwrap().is_empty(),
        "{view}"
    );

    // Nothing new: the next run is incremental and changes no id.
    let before = sql(
        &ws,
        "select id_type, id_value, profile_id from identities order by 1, 2",
    );
    let again = json(&ws, &["resolve"]);
    assert_eq!(again["mode"], "incremental", "{again}");
    assert_eq!(again["new_sightings"], 0, "{again}");
    assert_eq!(
        sql(
            &ws,
            "select id_type, id_value, profile_id from identities order by 1, 2"
        ),
        before
    );
}

/// Splits a JSON lines file in two by line.
fn halves(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mid = lines.len() / 2;
    (
        lines[..mid].join("\n") + "\n",
        lines[mid..].join("\n") + "\n",
    )
}

#[test]
fn incremental_runs_equal_a_full_run() {
    let dir = tempfile::tempdir().unwrap();
    ok(tribe(dir.path()).args(["demo", "d", "--people", "200", "--seed", "11"]));
    let demo = dir.path().join("d");
    let config = std::fs::read_to_string(demo.join("tribe.toml")).unwrap();
    let src = demo.join("sources");
    let (web1, web2) = halves(&src.join("web.jsonl"));

    // Step by step: part of the data, resolve; the rest, resolve again.
    let inc = dir.path().join("inc");
    std::fs::create_dir(&inc).unwrap();
    std::fs::write(inc.join("tribe.toml"), &config).unwrap();
    let web1 = write(&inc, "web1.jsonl", &web1);
    let web2 = write(&inc, "web2.jsonl", &web2);
    let path = |p: &Path| p.to_str().unwrap().to_string();
    ok(tribe(&inc).args(["ingest", "events", &path(&web1)]));
    ok(tribe(&inc).args([
        "ingest",
        "records",
        "--source",
        "crm",
        &path(&src.join("crm_contacts.csv")),
    ]));
    json(&inc, &["resolve"]);
    ok(tribe(&inc).args([
        "ingest",
        "events",
        &path(&web2),
        &path(&src.join("app.jsonl")),
        &path(&src.join("email.jsonl")),
    ]));
    ok(tribe(&inc).args([
        "ingest",
        "records",
        "--source",
        "pos",
        &path(&src.join("pos_orders.parquet")),
    ]));
    let second = json(&inc, &["resolve"]);
    assert_eq!(second["mode"], "incremental", "{second}");
    assert!(second["new_sightings"].as_u64().unwrap() > 0);
    let identities = "select id_type, id_value, profile_id from identities order by 1, 2";
    let profiles = "select * from profiles order by profile_id";
    let keys = "select key_type, key, profile_id from profile_keys order by 1, 2";
    let routes = "select user_id, anonymous_id, message_id, profile_id from profile_routes \
                  order by 1, 2, 3";
    let (inc_ids, inc_profiles, inc_keys, inc_routes) = (
        sql(&inc, identities),
        sql(&inc, profiles),
        sql(&inc, keys),
        sql(&inc, routes),
    );

    // The same workspace, recomputed from scratch: identical, ids included.
    let full = json(&inc, &["resolve", "--full"]);
    assert_eq!(full["mode"], "full");
    assert_eq!(full["merges"], 0, "{full}");
    assert_eq!(full["splits"], 0, "{full}");
    assert_eq!(sql(&inc, identities), inc_ids);
    assert_eq!(sql(&inc, profiles), inc_profiles);
    assert_eq!(sql(&inc, keys), inc_keys);
    assert_eq!(sql(&inc, routes), inc_routes);

    // New data compacted together with old before the next run, the superseded files
    // vacuumed: the run cannot read the new data on its own, and must still see all of it.
    let more = (0..5)
        .map(|i| {
            identify(
                &format!("late{i}"),
                Some(&format!("late-user-{i}")),
                Some(&format!("late-anon-{i}")),
                "2026-06-01T10:00:00Z",
                "{}",
            )
        })
        .collect::<Vec<_>>();
    ingest(&inc, "late.jsonl", &more);
    ok(tribe(&inc).args(["maintain", "--retention-hours", "0"]));
    json(&inc, &["resolve"]);
    assert_eq!(
        sql(
            &inc,
            "select count(*) from identities where id_value like 'late-user-%'"
        ),
        ["5"]
    );

    // A fresh workspace with all the data at once groups the identifiers the same way.
    ok(tribe(&demo).args(["ingest", "events", &path(&inc.join("late.jsonl"))]));
    let groups = "select string_agg(id_type || ':' || id_value, ' ' order by id_type, id_value) as g \
                  from identities group by profile_id order by g";
    json(&demo, &["resolve"]);
    assert_eq!(sql(&inc, groups), sql(&demo, groups));
}

/// Every identity output table, sorted, as text.
fn identity_tables(dir: &Path) -> Vec<Vec<String>> {
    [
        "select * from identities order by id_type, id_value",
        "select * from profiles order by profile_id",
        "select * from profile_keys order by key_type, key",
        "select * from profile_routes order by user_id, anonymous_id, message_id",
        "select * from profile_consent order by profile_id, channel",
        "select * from identity_conflicts order by id_type, id_value, other_type, other_value",
    ]
    .iter()
    .map(|q| sql(dir, q))
    .collect()
}

/// An incremental run's (affected stored profiles, recomputed profiles).
fn recomputed(report: &Value) -> (u64, u64) {
    let count = |field: &str| {
        report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field}: {report}"))
    };
    (count("affected_profiles"), count("recomputed_profiles"))
}

/// Resolves fully and checks that every identity table is what the incremental runs left.
fn assert_full_run_agrees(dir: &Path) {
    let incremental = identity_tables(dir);
    let full = json(dir, &["resolve", "--full"]);
    assert_eq!(
        (full["merges"].as_u64(), full["splits"].as_u64()),
        (Some(0), Some(0)),
        "{full}"
    );
    assert_eq!(identity_tables(dir), incremental);
}

#[test]
fn incremental_runs_recompute_only_the_profiles_new_data_reaches() {
    let ws = workspace(Backend::Local, "");
    let dir = ws.path();
    let ana = r#"{"email":"ana@example.com","plan":"free","score":1}"#;
    ingest(
        dir,
        "a.jsonl",
        &[
            identify("m1", Some("u1"), Some("a1"), "2026-01-01T10:00:00Z", ana),
            // u2 on u1's device: refused (one user id per profile), so u1 and u2 are decided
            // together from now on.
            identify("m2", Some("u2"), Some("a1"), "2026-01-02T10:00:00Z", "{}"),
            identify("m3", Some("u3"), Some("a3"), "2026-01-03T10:00:00Z", r#"{"plan":"pro"}"#),
            page("m4", "a4", "2026-01-04T10:00:00Z"),
            page("m5", "a5", "2026-01-05T10:00:00Z"),
            // An alias from a device id no user id has.
            r#"{"type":"alias","messageId":"m6","userId":"u6","previousId":"x6","timestamp":"2026-01-06T10:00:00Z"}"#.to_string(),
        ],
    );
    let first = json(dir, &["resolve"]);
    assert_eq!(first["mode"], "full", "{first}");
    assert_eq!(first["profiles"], 6, "{first}");

    // Nothing new: no profile is recomputed and no table rewritten.
    let commits = |table: &str| {
        std::fs::read_dir(dir.join("data").join(table).join("_delta_log"))
            .unwrap()
            .count()
    };
    let versions = commits("profiles");
    let again = json(dir, &["resolve"]);
    assert_eq!(again["mode"], "incremental", "{again}");
    assert_eq!(recomputed(&again), (0, 0), "{again}");
    assert_eq!(again["profiles"], 6, "{again}");
    assert_eq!(commits("profiles"), versions);

    // One visitor comes back: only their profile is recomputed, and the tables whose rows for
    // it did not change (keys, routes) get no new version.
    let routes = commits("profile_routes");
    ingest(dir, "b.jsonl", &[page("m7", "a4", "2026-02-01T10:00:00Z")]);
    let one = json(dir, &["resolve"]);
    assert_eq!(recomputed(&one), (1, 1), "{one}");
    assert_eq!(one["profiles"], 6, "{one}");
    assert_eq!(commits("profile_routes"), routes);
    assert_eq!(
        sql(
            dir,
            "select events from profiles p join identities i using (profile_id) where i.id_value = 'a4'"
        ),
        ["2"]
    );
    assert_full_run_agrees(dir);

    // u2 comes back: u1 is recomputed with it (they share a refused link), nobody else.
    ingest(
        dir,
        "c.jsonl",
        &[identify(
            "m8",
            Some("u2"),
            None,
            "2026-02-02T10:00:00Z",
            r#"{"plan":"pro"}"#,
        )],
    );
    let pair = json(dir, &["resolve"]);
    assert_eq!(recomputed(&pair), (2, 2), "{pair}");
    assert_full_run_agrees(dir);

    // Visitor a5 logs in as u3 (two profiles merge, the older id survives), a new person
    // arrives, u6's old alias turns out to name a user id, and ana's score changes type.
    let u3 = profile_of(dir, "user_id", "u3");
    ingest(
        dir,
        "d.jsonl",
        &[
            identify("m9", Some("u3"), Some("a5"), "2026-02-03T10:00:00Z", "{}"),
            identify(
                "m10",
                Some("u10"),
                Some("a10"),
                "2026-02-04T10:00:00Z",
                r#"{"plan":"free"}"#,
            ),
            identify("m11", Some("x6"), None, "2026-02-05T10:00:00Z", "{}"),
            identify(
                "m12",
                Some("u1"),
                None,
                "2026-02-06T10:00:00Z",
                r#"{"score":"high"}"#,
            ),
        ],
    );
    let mixed = json(dir, &["resolve"]);
    assert_eq!(mixed["mode"], "incremental", "{mixed}");
    assert_eq!(mixed["merges"], 1, "{mixed}");
    assert_eq!(profile_of(dir, "anonymous_id", "a5"), u3);
    assert!(mixed["affected_profiles"].as_u64().unwrap() < 6, "{mixed}");
    assert_eq!(
        sql(dir, "select score from profiles where user_id = 'u1'"),
        ["high"]
    );
    assert_full_run_agrees(dir);

    // A rule change recomputes every profile from the stored sightings.
    let config = std::fs::read_to_string(dir.join("tribe.toml")).unwrap();
    std::fs::write(
        dir.join("tribe.toml"),
        format!("{config}\n[identity]\nlimits = {{ user_id = 2, email = 5 }}\n"),
    )
    .unwrap();
    let rebuild = json(dir, &["resolve"]);
    assert_eq!(rebuild["mode"], "rebuild", "{rebuild}");
    assert_eq!(
        profile_of(dir, "user_id", "u2"),
        profile_of(dir, "user_id", "u1")
    );
    assert_full_run_agrees(dir);
}

#[test]
fn limits_blocks_merges_and_splits() {
    let ws = workspace(Backend::Local, "");
    let dir = ws.path();
    ingest(
        dir,
        "a.jsonl",
        &[
            // u1 logs in on a device a1; later u2 logs in on the same device.
            identify(
                "m1",
                Some("u1"),
                Some("a1"),
                "2026-01-01T10:00:00Z",
                r#"{"email":"u1@example.com"}"#,
            ),
            identify(
                "m2",
                Some("u2"),
                Some("a1"),
                "2026-02-01T10:00:00Z",
                r#"{"email":"u2@example.com"}"#,
            ),
            // Junk identifiers are skipped and merge nothing.
            identify(
                "m3",
                Some("null"),
                Some("a9"),
                "2026-01-05T10:00:00Z",
                r#"{"email":"test@test.com","phone":"call me"}"#,
            ),
            identify(
                "m4",
                Some("u9"),
                None,
                "2026-01-06T10:00:00Z",
                r#"{"email":"test@test.com"}"#,
            ),
            // An anonymous visitor, and a user with two e-mails.
            page("m5", "a3", "2026-01-02T10:00:00Z"),
            identify(
                "m6",
                Some("u3"),
                None,
                "2026-01-03T10:00:00Z",
                r#"{"email":"u3@example.com"}"#,
            ),
            identify(
                "m7",
                Some("u3"),
                None,
                "2026-01-04T10:00:00Z",
                r#"{"email":"u3.work@example.com"}"#,
            ),
        ],
    );
    let report = json(dir, &["resolve"]);
    assert_eq!(report["conflicts"], 1, "{report}");
    let skipped = report["skipped"].to_string();
    assert!(
        skipped.contains("blocked value") && skipped.contains("not a phone number"),
        "{skipped}"
    );
    assert_eq!(
        profile_of(dir, "anonymous_id", "a1"),
        profile_of(dir, "user_id", "u1")
    );
    assert_ne!(
        profile_of(dir, "user_id", "u2"),
        profile_of(dir, "user_id", "u1")
    );
    assert_eq!(
        profile_of(dir, "email", "u2@example.com"),
        profile_of(dir, "user_id", "u2")
    );
    assert_ne!(
        profile_of(dir, "anonymous_id", "a9"),
        profile_of(dir, "user_id", "u9")
    );
    assert_eq!(
        sql_count(
            dir,
            "select count(*) from identities where id_value in ('null', 'test@test.com')"
        ),
        0
    );
    let conflict = sql(
        dir,
        "select id_value, other_value, limited_type from identity_conflicts",
    );
    assert_eq!(conflict, vec!["a1,u2,user_id"]);
    // u2's events after login stay with u2 even on the shared device.
    let u2 = profile_of(dir, "user_id", "u2");
    assert_eq!(
        sql(
            dir,
            "select profile_id from profile_events where message_id = 'm2'"
        ),
        vec![u2.clone()]
    );
    // An event whose user id is refused as an identifier belongs to its anonymous id.
    assert_eq!(
        sql(
            dir,
            "select profile_id from profile_events where message_id = 'm3'"
        ),
        vec![profile_of(dir, "anonymous_id", "a9")]
    );

    // Before any merge the table is there for SQL, empty.
    assert_eq!(sql_count(dir, "select count(*) from profile_merges"), 0);
    // The visitor logs in: the two profiles merge, and the older id (the visit's) survives.
    let visitor = profile_of(dir, "anonymous_id", "a3");
    let user = profile_of(dir, "user_id", "u3");
    assert_ne!(visitor, user);
    ingest(
        dir,
        "b.jsonl",
        &[identify(
            "m8",
            Some("u3"),
            Some("a3"),
            "2026-03-01T10:00:00Z",
            "{}",
        )],
    );
    let report = json(dir, &["resolve"]);
    assert_eq!(
        (report["mode"].as_str(), report["merges"].as_u64()),
        (Some("incremental"), Some(1)),
        "{report}"
    );
    assert_eq!(profile_of(dir, "user_id", "u3"), visitor);
    let merge = sql(
        dir,
        "select from_profile, into_profile, kind from profile_merges",
    );
    assert_eq!(merge, vec![format!("{user},{visitor},merge")]);
    assert_eq!(
        sql_count(
            dir,
            &format!("select count(*) from profile_events where profile_id = '{visitor}'")
        ),
        4
    );

    // A stricter rule, applied retroactively with --full, splits u3's second e-mail off.
    let config = std::fs::read_to_string(dir.join("tribe.toml")).unwrap();
    std::fs::write(
        dir.join("tribe.toml"),
        format!("{config}\n[identity]\nlimits = {{ user_id = 1, email = 1 }}\n"),
    )
    .unwrap();
    let report = json(dir, &["resolve", "--full"]);
    assert_eq!(report["splits"], 1, "{report}");
    assert_eq!(profile_of(dir, "user_id", "u3"), visitor);
    let split_off = profile_of(dir, "email", "u3.work@example.com");
    assert_ne!(split_off, visitor);
    let split = sql(
        dir,
        "select from_profile, into_profile from profile_merges where kind = 'split'",
    );
    assert_eq!(split, vec![format!("{visitor},{split_off}")]);

    // Unknown keys give a clear error.
    let out = run(tribe(dir).args(["profile", "show", "nobody@example.com"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no profile has"),
        "{out:?}"
    );
}

#[test]
fn traits_merge_by_rule_and_consent_follows_the_latest_statement() {
    let extra = r#"
[identity]
large_profile = 1
consent = { email = "newsletter" }
traits = { plan = { sources = ["crm", "web"] }, signup_source = "first", color = "most_frequent" }

[records.crm]
identifiers = { email = "email" }
traits = { plan = "plan" }
consent = { email = "email_ok" }
"#;
    let ws = workspace(Backend::Local, extra);
    let dir = ws.path();
    let t = |traits: &str, id: &str, ts: &str| identify(id, Some("u1"), None, ts, traits);
    ingest(
        dir,
        "a.jsonl",
        &[
            t(
                r#"{"email":"ana@example.com","name":"Ana","plan":"free","signup_source":"ads","color":"red"}"#,
                "m1",
                "2026-01-01T00:00:00Z",
            ),
            t(
                r#"{"name":"Ana Maria","plan":"pro","signup_source":"seo","color":"blue","newsletter":true}"#,
                "m2",
                "2026-02-01T00:00:00Z",
            ),
            t(
                r#"{"color":"red","name":null}"#,
                "m3",
                "2026-03-01T00:00:00Z",
            ),
        ],
    );
    let crm = write(
        dir,
        "crm.csv",
        "email,plan,email_ok\n ANA@example.com ,gold,no\n",
    );
    ok(tribe(dir).args([
        "ingest",
        "records",
        "--source",
        "crm",
        crm.to_str().unwrap(),
    ]));
    let report = json(dir, &["resolve"]);
    // Profiles over `large_profile` identifiers are reported: this one has a user id and an e-mail.
    let large = &report["large_profiles"];
    assert_eq!(large.as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(large[0]["identifiers"], 2, "{report}");
    let row = sql(
        dir,
        "select name, plan, signup_source, color, email, events from profiles",
    );
    assert_eq!(row, vec!["Ana Maria,gold,ads,red,ana@example.com,3"]);
    // The CRM row was ingested after the events: its "no" is the latest statement.
    assert_eq!(
        sql(dir, "select consent_email from profiles"),
        vec!["false"]
    );
    // With when and by whom: the CRM load, not the earlier identify of the web source.
    assert_eq!(
        sql(dir, "select channel, granted, source from profile_consent"),
        vec!["email,false,crm"]
    );
    let traits: BTreeMap<String, Value> = serde_json::from_str(
        &sql(dir, "select traits from profiles")[0]
            .trim_matches('"')
            .replace("\"\"", "\""),
    )
    .unwrap();
    assert_eq!(traits["plan"], "gold");
}

#[test]
fn resolves_on_s3() {
    let ws = workspace(Backend::S3, "");
    let dir = ws.path();
    ingest(
        dir,
        "a.jsonl",
        &[
            page("m1", "a1", "2026-01-01T10:00:00Z"),
            identify(
                "m2",
                Some("u1"),
                Some("a1"),
                "2026-01-02T10:00:00Z",
                r#"{"email":"u1@example.com"}"#,
            ),
        ],
    );
    let report = json(dir, &["resolve"]);
    assert_eq!(report["profiles"], 1, "{report}");
    ingest(dir, "b.jsonl", &[page("m3", "a2", "2026-01-03T10:00:00Z")]);
    let report = json(dir, &["resolve"]);
    assert_eq!(
        (report["mode"].as_str(), report["profiles"].as_u64()),
        (Some("incremental"), Some(2)),
        "{report}"
    );
    assert_eq!(
        sql_count(dir, "select count(distinct profile_id) from profile_events"),
        2
    );
}

#[test]
fn a_killed_run_leaves_tables_readable_and_the_next_run_recovers() {
    let dir = tempfile::tempdir().unwrap();
    ok(tribe(dir.path()).args(["demo", "d", "--people", "300", "--seed", "5"]));
    let ws = dir.path().join("d");
    json(&ws, &["resolve"]);
    let identities = "select id_type, id_value, profile_id from identities order by 1, 2";
    for delay in [30u64, 150, 400] {
        // New data, so that the run has work to do.
        let file = write(
            &ws,
            "more.jsonl",
            &format!(
                "{}\n",
                page(
                    &format!("k{delay}"),
                    &format!("new-{delay}"),
                    "2026-06-01T00:00:00Z"
                )
            ),
        );
        ok(tribe(&ws).args(["ingest", "events", file.to_str().unwrap()]));
        let mut child = tribe(&ws).arg("resolve").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Every table still reads.
        for table in [
            "identities",
            "profiles",
            "identity_links",
            "profile_keys",
            "profile_routes",
        ] {
            sql(&ws, &format!("select count(*) from {table}"));
        }
        let report = json(&ws, &["resolve"]);
        assert!(report["profiles"].as_u64().unwrap() > 0, "{report}");
        let recovered = sql(&ws, identities);
        assert!(
            recovered
                .iter()
                .any(|r| r.contains(&format!("new-{delay}"))),
            "delay {delay}"
        );
        json(&ws, &["resolve", "--full"]);
        assert_eq!(sql(&ws, identities), recovered, "delay {delay}");
    }
}

/// A workspace from before route keys: `events` without them, then new events ingested (the
/// table gains the columns at its end, its old files keep none). `profile_events` joins on the
/// text ids there and on the keys in a workspace created with them; both route every event to
/// the same profile.
#[test]
fn events_from_before_route_keys_still_find_their_profiles() {
    use tribe::storage::{WriteMode, schema};
    let lines = |from: usize, to: usize| -> Vec<String> {
        (from..to)
            .flat_map(|i| {
                let ts = format!("2026-03-{:02}T10:00:00Z", 1 + i % 20);
                [
                    identify(
                        &format!("i{i}"),
                        Some(&format!("u{}", i % 7)),
                        Some(&format!("a{i}")),
                        &ts,
                        "{}",
                    ),
                    page(&format!("p{i}"), &format!("a{i}"), &ts),
                ]
            })
            .collect()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let joins_on_keys = |dir: &Path| {
        runtime.block_on(async {
            let ws = tribe::workspace::Workspace::open(dir).unwrap();
            let (ctx, _) = tribe::sql::session(&ws).await.unwrap();
            tribe::sql::joins_on_route_keys(&ctx).await.unwrap()
        })
    };

    let old = workspace(Backend::Local, "");
    ingest(old.path(), "first.jsonl", &lines(0, 30));
    // Rewrite `events` as the old version stored it: no route key columns.
    runtime.block_on(async {
        let ws = tribe::workspace::Workspace::open(old.path()).unwrap();
        let (ctx, _) = tribe::sql::session(&ws).await.unwrap();
        let mut spec = schema::events(&ws.config);
        let fields: Vec<_> = spec
            .schema
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with("route_") || f.name() == "route_id")
            .cloned()
            .collect();
        let names: Vec<String> = fields.iter().map(|f| format!("\"{}\"", f.name())).collect();
        spec.schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
        let rows = ctx
            .sql(&format!("select {} from events", names.join(", ")))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        ws.storage
            .write(&spec, rows, WriteMode::Replace)
            .await
            .unwrap();
    });
    ingest(old.path(), "second.jsonl", &lines(30, 60));
    json(old.path(), &["resolve"]);

    let new = workspace(Backend::Local, "");
    ingest(new.path(), "first.jsonl", &lines(0, 30));
    ingest(new.path(), "second.jsonl", &lines(30, 60));
    json(new.path(), &["resolve"]);

    assert!(!joins_on_keys(old.path()));
    assert!(joins_on_keys(new.path()));
    let routed = "select message_id, profile_id from profile_events order by 1";
    let rows = sql(old.path(), routed);
    assert_eq!(rows.len(), 120);
    assert!(rows.iter().all(|r| !r.ends_with(',')), "{rows:?}");
    assert_eq!(rows, sql(new.path(), routed));
    assert_eq!(
        sql_count(
            old.path(),
            "select count(*) from events where route_hi is null"
        ),
        60
    );
}

/// The identity scan groups events itself (by route key, source and, for the few events that
/// say more than their ids, their traits, previous id and identifying context): it must give
/// exactly the sightings a SQL `GROUP BY` of those columns gives. On demo data (web, app,
/// e-mail with `context.traits`, shop orders with neither user nor anonymous id) plus a group
/// event with traits, empty traits, an alias and `context.externalIds`.
#[test]
fn the_event_scan_groups_events_as_a_sql_group_by_does() {
    use tribe::identity::sightings::{Kind, Sighting, ints, strings};
    let (_tmp, dir) = common::demo(300, 3);
    let ts = "2026-05-02T10:00:00Z";
    ingest(
        &dir,
        "extra.jsonl",
        &[
            r#"{"type":"group","messageId":"x1","userId":"u-x","groupId":"g1","traits":{"name":"Acme"},"timestamp":"2026-05-02T10:00:00Z"}"#.to_string(),
            identify("x2", Some("u-x"), Some("a-x"), ts, "{}"),
            identify("x3", Some("u-x"), Some("a-x"), "2026-05-03T10:00:00Z", "{}"),
            identify("x4", Some("u-x"), Some("a-x"), ts, r#"{"email":"x@example.com"}"#),
            r#"{"type":"alias","messageId":"x5","userId":"u-x","previousId":"a-old","timestamp":"2026-05-02T10:00:00Z"}"#.to_string(),
            r#"{"type":"track","messageId":"x6","event":"Signed Up","anonymousId":"a-x","context":{"externalIds":[{"type":"crm_id","id":"C-1","collection":"users"}]},"timestamp":"2026-05-02T11:00:00Z"}"#.to_string(),
            page("x7", "a-x", ts),
        ],
    );
    let key = |s: &Sighting| format!("{s:?}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut ours, mut reference) = runtime.block_on(async {
        let ws = tribe::workspace::Workspace::open(&dir).unwrap();
        let spec = tribe::storage::schema::events(&ws.config);
        let table = ws.storage.open(&spec).await.unwrap().unwrap();
        let ctx = tribe::sql::new_context(1024).unwrap();
        let ours = tribe::identity::scan::scan_events(&ctx, &table, None)
            .await
            .unwrap();
        let batches = ctx
            .sql(
                r#"select user_id, anonymous_id, previous_id, route_id,
                      case when type <> 'group' and traits <> '{}' then traits end,
                      case when context like '%"traits"%' or context like '%"externalIds"%' then context end,
                      source, min(timestamp), max(timestamp), count(*)
                   from src_events group by 1, 2, 3, 4, 5, 6, 7"#,
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut reference = Vec::new();
        for b in &batches {
            let s: Vec<_> = (0..7).map(|i| strings(b.column(i)).unwrap()).collect();
            let n: Vec<_> = (7..10).map(|i| ints(b.column(i)).unwrap()).collect();
            for row in 0..b.num_rows() {
                use arrow::array::Array;
                let get = |i: usize| (!s[i].is_null(row)).then(|| s[i].value(row).to_string());
                let (context_traits, external_ids) = get(5)
                    .map(|c| tribe::identity::scan::identifying_context(&c))
                    .unwrap_or_default();
                reference.push(Sighting {
                    kind: Kind::Event,
                    source: s[6].value(row).to_string(),
                    user_id: get(0),
                    anonymous_id: get(1),
                    previous_id: get(2),
                    message_id: get(3),
                    external_ids,
                    traits: get(4),
                    context_traits,
                    consent: None,
                    first_seen: n[0].value(row),
                    last_seen: n[1].value(row),
                    count: n[2].value(row),
                });
            }
        }
        (ours, reference)
    });
    ours.sort_by_cached_key(key);
    reference.sort_by_cached_key(key);
    assert!(reference.len() > 1000, "{} sightings", reference.len());
    for wanted in [
        "external_ids: [(\"crm_id\", \"C-1\")]",
        "previous_id: Some(\"a-old\")",
        "x@example.com",
    ] {
        assert!(ours.iter().any(|s| key(s).contains(wanted)), "{wanted}");
    }
    // The two identifies with `{}` traits are one sighting of two events, without traits.
    assert!(ours.iter().any(|s| s.user_id.as_deref() == Some("u-x")
        && s.anonymous_id.as_deref() == Some("a-x")
        && s.traits.is_none()
        && s.count == 2));
    assert_eq!(ours.len(), reference.len());
    for (a, b) in ours.iter().zip(&reference) {
        assert_eq!(a, b);
    }
}
