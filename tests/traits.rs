//! Computed traits against published numbers: BG/NBD and Gamma-Gamma fitted to the CDNOW sample
//! reproduce the literature's parameters (Fader, Hardie & Lee 2005, as the `lifetimes` package
//! reports them), through the real binary.

mod common;

use std::path::Path;

use common::{demo, ok, run, tribe};

fn within(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        ((got - want) / want).abs() <= rel,
        "{what}: {got} is not within {}% of {want}",
        rel * 100.0
    );
}

/// Ingests JSON lines of events into the workspace in `dir`, resolves, computes traits as of
/// `as_of`, and returns the compute report.
fn compute_from_events(dir: &Path, events: &str, as_of: &str) -> serde_json::Value {
    let file = common::write(dir, "events.jsonl", events);
    ok(tribe(dir).args(["ingest", "events", file.to_str().unwrap()]));
    ok(tribe(dir).args(["resolve"]));
    let out = ok(tribe(dir).args(["traits", "compute", "--as-of", as_of, "--format", "json"]));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn cdnow_sample_reproduces_the_published_fits() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cdnow/CDNOW_sample.txt");
    let dir = tempfile::tempdir().unwrap();
    let out = ok(tribe(dir.path()).args([
        "traits",
        "fit-cdnow",
        file.to_str().unwrap(),
        "--format",
        "json",
    ]));
    let fit: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = |k: &str| fit[k].as_f64().unwrap_or_else(|| panic!("no {k} in {fit}"));
    within(f("r"), 0.243, 0.005, "r");
    within(f("alpha"), 4.414, 0.005, "alpha");
    within(f("a"), 0.793, 0.005, "a");
    within(f("b"), 2.426, 0.005, "b");
    assert!((f("log_likelihood") - -9582.4).abs() <= 0.1, "{fit}");
    within(f("p"), 6.25, 0.005, "p");
    within(f("q"), 3.74, 0.005, "q");
    within(f("gamma"), 15.44, 0.005, "gamma");
    assert_eq!(fit["counts"]["customers"], 2357);
    assert_eq!(fit["counts"]["repeat_customers"], 946);
}

#[test]
fn cdnow_summary_matches_the_reference_summary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cdnow");
    let summary = tribe::traits::cdnow::summarise(&dir.join("CDNOW_sample.txt")).unwrap();
    let reference =
        std::fs::read_to_string(dir.join("cdnow_customers_summary_with_transactions.csv")).unwrap();
    let rows: Vec<Vec<f64>> = reference
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), summary.histories.len());
    // Customers in sample-id order on both sides.
    for (row, h) in rows.iter().zip(&summary.histories) {
        assert_eq!(row[1], h.x, "{row:?} {h:?}");
        assert!((row[2] - h.t_x).abs() < 0.006, "{row:?} {h:?}");
        assert!((row[3] - h.t).abs() < 0.006, "{row:?} {h:?}");
        assert!((row[4] - h.zbar).abs() < 0.006, "{row:?} {h:?}");
    }
}

#[test]
fn bad_cdnow_input_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let file = common::write(
        dir.path(),
        "bad.txt",
        " 00001 0001 19970101  2   29.33\n 00001 0001 1997013x  1   10.00\n",
    );
    let out = run(tribe(dir.path()).args(["traits", "fit-cdnow", file.to_str().unwrap()]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.txt:2: column 3 (date): \"1997013x\" is not a YYYYMMDD date"),
        "{err}"
    );
    // One-time buyers only: BG/NBD cannot be fitted, and says why.
    let file = common::write(
        dir.path(),
        "once.txt",
        " 00001 0001 19970101  2   29.33\n 00002 0002 19970102  1   10.00\n",
    );
    let out = run(tribe(dir.path()).args(["traits", "fit-cdnow", file.to_str().unwrap()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no customer has a repeat purchase"), "{err}");
}

#[test]
fn traits_compute_writes_rfm_and_clv_usable_in_sql_and_segments() {
    let (_tmp, ws) = demo(300, 5);
    // A model whose event never happens cannot be trained: reported, its column all null.
    let mut config = std::fs::read_to_string(ws.join("tribe.toml")).unwrap();
    config.push_str("\n[traits.models.never_happens]\nevent = \"Unheard Of\"\nhorizon_days = 30\n");
    std::fs::write(ws.join("tribe.toml"), config).unwrap();
    let out = ok(tribe(&ws).args([
        "traits",
        "compute",
        "--as-of",
        "2026-07-01",
        "--format",
        "json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let buyers = report["buyers"].as_i64().unwrap();
    assert!(buyers > 100, "{report}");
    assert!(report["bgnbd"]["r"].as_f64().unwrap() > 0.0, "{report}");
    let not_produced = report["not_produced"].as_array().unwrap();
    assert_eq!(not_produced.len(), 1, "{report}");
    assert!(
        not_produced[0]
            .as_str()
            .unwrap()
            .starts_with("never_happens: all ")
            && not_produced[0]
                .as_str()
                .unwrap()
                .contains("have the same label (negative)"),
        "{report}"
    );
    assert_eq!(
        common::sql(&ws, "select count(never_happens) from traits"),
        vec!["0"]
    );
    // One row per profile; purchase traits for buyers only, scores 1-5; model values present
    // and finite for every buyer; propensities for everyone, in [0, 1].
    let profiles = report["profiles"].as_i64().unwrap();
    assert!(profiles > buyers, "{report}");
    let rows = common::sql(
        &ws,
        "select count(*), count(frequency), min(rfm_recency), max(rfm_frequency), count(p_alive), count(clv), \
        sum(case when isnan(clv) or clv < 0 or p_alive < 0 or p_alive > 1 then 1 else 0 end), \
        count(churn_propensity), count(purchase_propensity_30d), \
        sum(case when churn_propensity between 0 and 1 and purchase_propensity_30d between 0 and 1 then 1 else 0 end) \
        from traits",
    );
    assert_eq!(
        rows,
        vec![format!(
            "{profiles},{buyers},1,5,{buyers},{buyers},0,{profiles},{profiles},{profiles}"
        )]
    );
    // Each model is stored with its holdout metrics, and its AUC beats chance.
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 2, "{report}");
    for m in models {
        assert!(m["auc"].as_f64().unwrap() > 0.6, "{m}");
    }
    let stored = common::sql(&ws, "select model, kind from trait_models order by model");
    assert_eq!(
        stored,
        vec![
            "bgnbd,bgnbd",
            "churn_propensity,logistic_regression",
            "gamma_gamma,gamma_gamma",
            "purchase_propensity_30d,logistic_regression"
        ]
    );
    // The report shows every model, the calibration of each propensity model on its held-out
    // profiles, and a distribution per numeric trait.
    let out = ok(tribe(&ws).args(["traits", "report", "--format", "json"]));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "bgnbd",
            "gamma_gamma",
            "churn_propensity",
            "purchase_propensity_30d"
        ]
    );
    assert_eq!(r["calibration"].as_array().unwrap().len(), 20, "{r}");
    // Features: a categorical trait with few values gets indicators, names (many values) none;
    // consent flags enter as booleans.
    let features: Vec<&str> = r["models"][2]["parameters"]["model"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        features.iter().any(|f| f.starts_with("country = ")),
        "{features:?}"
    );
    assert!(features.contains(&"consent_email"), "{features:?}");
    assert!(
        !features.iter().any(|f| f.starts_with("first_name")),
        "{features:?}"
    );
    assert!(features.contains(&"p_alive"), "{features:?}");
    let churn = r["distributions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["trait"] == "churn_propensity")
        .unwrap();
    assert_eq!(churn["profiles"].as_i64().unwrap(), profiles);
    assert!(churn["p10"].as_f64().unwrap() <= churn["p90"].as_f64().unwrap());
    let table = ok(tribe(&ws).args(["traits", "report"]));
    assert!(table.contains("holdout AUC"), "{table}");
    // Buyers recently active have higher p_alive than those long gone, on average.
    let by = common::sql(
        &ws,
        "select round(avg(case when recency_days < 30 then p_alive end) - avg(case when recency_days > 180 then p_alive end), 3) > 0 from traits",
    );
    assert_eq!(by, vec!["true"]);
    // Traits are profile fields in segments.
    std::fs::write(
        ws.join("queries/value.seg"),
        "segment valuable = clv > 300 and rfm_segment != \"hibernating\"\n\
         segment likely_buyers = purchase_propensity_30d > 0.5\n",
    )
    .unwrap();
    // Members of a segment over traits are the profiles the same condition selects in SQL.
    let members = |segment: &str| -> i64 {
        ok(tribe(&ws).args([
            "segment",
            "run",
            segment,
            "--as-of",
            "2026-07-01",
            "--count",
        ]))
        .trim()
        .parse()
        .unwrap()
    };
    let n = members("valuable");
    let expected = common::sql_count(
        &ws,
        "select count(*) from traits where clv > 300 and rfm_segment <> 'hibernating'",
    );
    assert_eq!(n, expected);
    assert!(n > 0);
    let n = members("likely_buyers");
    let expected = common::sql_count(
        &ws,
        "select count(*) from traits where purchase_propensity_30d > 0.5",
    );
    assert_eq!(n, expected);

    // Traits computed before a merge still hold the profile merged away: a segment over
    // traits selects current profiles only. A known customer identifies with the e-mail of a
    // buyer who never logged in, which merges their two profiles.
    let with_rfm = |id_type: &str, with_user_id: bool| {
        common::sql(
            &ws,
            &format!(
                "select min(i.id_value) from identities i join traits t using (profile_id) \
                 where i.id_type = '{id_type}' and t.rfm_segment is not null and \
                 {} exists (select 1 from identities u \
                 where u.profile_id = i.profile_id and u.id_type = 'user_id')",
                if with_user_id { "" } else { "not" }
            ),
        )[0]
        .clone()
    };
    let (user, email) = (with_rfm("user_id", true), with_rfm("email", false));
    let event = serde_json::json!({"type": "identify", "messageId": "merge-1", "userId": user,
        "traits": {"email": email}, "timestamp": "2026-06-30T12:00:00Z"});
    let file = common::write(&ws, "merge.jsonl", &event.to_string());
    ok(tribe(&ws).args(["ingest", "events", file.to_str().unwrap()]));
    ok(tribe(&ws).args(["resolve"]));
    let stale = "select count(*) from traits where rfm_segment is not null \
                 and profile_id not in (select profile_id from profiles)";
    assert_eq!(
        common::sql_count(&ws, stale),
        1,
        "the merge left one stale traits row"
    );
    std::fs::write(
        ws.join("queries/rfm.seg"),
        "segment has_rfm = rfm_segment is not null\n",
    )
    .unwrap();
    let current = "select count(*) from traits join profiles using (profile_id) \
                   where rfm_segment is not null";
    assert_eq!(members("has_rfm"), common::sql_count(&ws, current));
}

/// The issue's yardstick: on CDNOW (calibration to 1997-09-30, label: any purchase in the
/// 39-week holdout), a logistic regression on the calibration-period features reaches an AUC
/// of at least 0.77. The master file's 23,570 customers go through the real pipeline: ingest
/// as purchase events, resolve, `traits compute` with a model whose horizon is the holdout.
#[test]
fn cdnow_repurchase_propensity_reaches_the_published_auc() {
    let config = "[traits]\nunit = \"weeks\"\n\n\
        [traits.models.repurchase_39w]\nhorizon_days = 273\n";
    let dir = common::workspace(common::Backend::Local, config);
    let raw = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cdnow/CDNOW_master.txt"),
    )
    .unwrap();
    let mut lines = String::new();
    for (n, line) in raw.lines().skip(1).enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let d = f[1];
        let ts = format!("{}-{}-{}T00:00:00Z", &d[..4], &d[4..6], &d[6..]);
        lines.push_str(&common::track(
            &format!("m{n}"),
            &format!("c{}", f[0]),
            "Order Completed",
            &ts,
            &format!("{{\"revenue\":{}}}", f[3]),
        ));
        lines.push('\n');
    }
    let report = compute_from_events(dir.path(), &lines, "1998-06-30T00:00:00Z");
    assert_eq!(report["profiles"], 23570, "{report}");
    let model = &report["models"][0];
    assert_eq!(model["name"], "repurchase_39w");
    // Every customer was first seen by the cutoff: 80% train, 20% held out.
    let holdout = model["holdout_rows"].as_u64().unwrap();
    assert!((4400..5000).contains(&holdout), "{model}");
    let auc = model["auc"].as_f64().unwrap();
    assert!(auc >= 0.77, "AUC {auc} below the published 0.77: {model}");
    eprintln!("CDNOW holdout: {model}");
}

#[test]
fn bad_model_declarations_are_config_errors() {
    for (model, want) in [
        (
            "[traits.models.clv]\nhorizon_days = 30\n",
            "[traits.models.clv]: model names are letters, digits and _, and not one of the built-in traits",
        ),
        (
            "[traits.models.churn]\nhorizon_days = 30\npredict = \"maybe\"\n",
            "[traits.models.churn] predict: \"maybe\" is not \"occurs\" or \"absent\"",
        ),
        (
            "[traits.models.churn]\nhorizon_days = 0\n",
            "[traits.models.churn] horizon_days: must be at least 1",
        ),
    ] {
        let dir = common::workspace(common::Backend::Local, model);
        let out = run(tribe(dir.path()).args(["traits", "compute"]));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("tribe.toml") && err.contains(want), "{err}");
    }
}

#[test]
fn purchases_in_other_currencies_are_skipped_and_counted() {
    let dir = common::workspace(common::Backend::Local, "[traits]\ncurrency = \"EUR\"\n");
    let order = |id: &str, user: &str, day: &str, value: f64, currency: &str| {
        common::track(
            id,
            user,
            "Order Completed",
            &format!("{day}T10:00:00Z"),
            &format!("{{\"revenue\":{value},\"currency\":\"{currency}\"}}"),
        )
    };
    let lines = [
        order("o1", "ana", "2026-05-01", 10.0, "EUR"),
        order("o2", "ana", "2026-05-20", 30.0, "EUR"),
        order("o3", "ana", "2026-05-20", 99.0, "USD"),
        order("o4", "bo", "2026-05-03", 5.0, "EUR"),
        order("o5", "cy", "2026-05-04", 7.0, "USD"),
    ];
    let report = compute_from_events(dir.path(), &(lines.join("\n") + "\n"), "2026-06-01");
    assert_eq!(report["other_currency"], 2, "{report}");
    assert_eq!(report["buyers"], 2, "{report}");
    assert_eq!(report["transactions"], 3, "{report}");
    // One repeat buyer is too few for Gamma-Gamma: said, and its columns left null.
    let not_produced = report["not_produced"].to_string();
    assert!(
        not_produced.contains("expected_spend, clv: Gamma-Gamma: 1 customer(s) with repeat purchases and positive spend"),
        "{report}"
    );
    assert_eq!(report["non_positive_spend"], 0, "{report}");
    // cy only bought in USD: a profile, but no purchase traits.
    let rows = common::sql(
        dir.path(),
        "select frequency, monetary from traits order by frequency nulls first, monetary",
    );
    assert_eq!(rows, vec![",", "1,5.0", "2,40.0"]);
}

#[test]
fn all_spend_zero_leaves_spend_traits_out_and_says_why() {
    let dir = common::workspace(common::Backend::Local, "");
    let lines: Vec<String> = ["ana", "bo", "cy"]
        .iter()
        .flat_map(|user| {
            ["2026-05-01", "2026-05-10", "2026-05-20"].map(|day| {
                common::track(
                    &format!("{user}-{day}"),
                    user,
                    "Order Completed",
                    &format!("{day}T10:00:00Z"),
                    r#"{"revenue":0}"#,
                )
            })
        })
        .collect();
    let report = compute_from_events(dir.path(), &(lines.join("\n") + "\n"), "2026-06-01");
    assert_eq!(report["non_positive_spend"], 3, "{report}");
    let not_produced = report["not_produced"].to_string();
    assert!(
        not_produced.contains("expected_spend, clv: Gamma-Gamma: 0 customer(s)"),
        "{report}"
    );
    // Nothing undefined is written: the spend columns are null, not NaN.
    let rows = common::sql(
        dir.path(),
        "select count(*), count(expected_spend), count(clv), sum(case when isnan(monetary) then 1 else 0 end) from traits",
    );
    assert_eq!(rows, vec!["3,0,0,0"]);
}
