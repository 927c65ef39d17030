//! Export benchmark (run with `cargo bench --bench export`): a Google Customer Match export of
//! `TRIBE_BENCH_MEMBERS` members (default 1,000,000) with hashed e-mail, phone and names, as
//! `tribe export run` does it: the audience query with consent in the plan, the diff against the
//! last delivered run, CSV files with checksums, the state and the manifest.
//!
//! A fresh workspace holds a `profiles` table of the members plus 10% who are not in the
//! segment. Three runs: the first (everyone is an add), one after 1% withdrew consent and 1%
//! joined (real adds and removes), and one with nothing changed. Then DuckDB (from the test
//! venv, when it is there) does the same work on the same Parquet files: the same hashing and
//! consent filter, anti-joins against the previous state for adds and removes, CSV out.

use std::path::Path;
use std::time::Instant;

use tribe::export::RunRequest;
use tribe::storage::TableSpec;
use tribe::workspace::Workspace;

mod common;
#[path = "support/profiles.rs"]
mod profiles;
use profiles::{profiles, write_profiles};

fn main() {
    tribe::tune_allocator();
    let members = common::env_number("TRIBE_BENCH_MEMBERS", 1_000_000) as usize;
    let root = common::bench_root("export");
    let dir = root.join(format!("export-{members}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("queries")).unwrap();
    std::fs::write(
        dir.join("tribe.toml"),
        "[workspace]\nname = \"bench\"\nstorage = \"data\"\n\n\
         [exports.google]\nsegment = \"known\"\npreset = \"google_customer_match\"\nconsent = \"ads\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("queries/bench.seg"),
        "segment known = is_known = true\n",
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ws = Workspace::open(&dir).unwrap();
        let total = members + members / 10;
        let changes = members / 100;
        println!("| run | audience | adds | removes | tribe |");
        println!("|---|---:|---:|---:|---:|");
        let mut state = Vec::new();
        for (label, batch) in [
            ("first run", profiles(total, members, &|_| false)),
            (
                "1% withdrew consent, 1% joined",
                profiles(total, members + changes, &|i| i % 100 == 3),
            ),
            (
                "nothing changed",
                profiles(total, members + changes, &|i| i % 100 == 3),
            ),
        ] {
            write_profiles(&ws, batch).await;
            let ws = Workspace::open(&dir).unwrap();
            let t = Instant::now();
            let req = RunRequest {
                as_of: chrono::Utc::now(),
                scheduled_for: None,
                attempt: 1,
            };
            let o = tribe::export::run::run(&ws, "google", &req).await.unwrap();
            let secs = t.elapsed().as_secs_f64();
            println!(
                "| {label} | {} | {} | {} | {secs:.2} s |",
                o.audience, o.adds, o.removes
            );
            eprintln!("{label}: {:?}", o.phases);
            state.push(o.run_id);
        }
        duckdb(&dir, &ws, &state[0]).await;
    });
}

/// The same export in DuckDB over the same Parquet files: the second run's work (hash, consent
/// filter, adds and removes against the first run's state), written as CSV.
async fn duckdb(dir: &Path, ws: &Workspace, previous_run: &str) {
    let python = common::venv_python();
    if !python.exists() {
        println!("\n(DuckDB not installed: run .ci/run once for the side-by-side)");
        return;
    }
    let table = ws
        .storage
        .open(&TableSpec::existing("profiles", "profiles"))
        .await
        .unwrap()
        .unwrap();
    let files: Vec<String> = table
        .get_file_uris()
        .unwrap()
        .map(|u| u.trim_start_matches("file://").to_string())
        .collect();
    let state = dir.join(format!("data/export_state/google/{previous_run}.parquet"));
    let out = dir.join("duckdb-out");
    std::fs::create_dir_all(&out).unwrap();
    let h = |e: &str| format!("sha256(nullif({e}, ''))");
    let email = "lower(trim(email))";
    let google_email = format!(
        "CASE WHEN split_part({email}, '@', 2) IN ('gmail.com', 'googlemail.com') \
         THEN replace(split_part({email}, '@', 1), '.', '') || '@' || split_part({email}, '@', 2) \
         ELSE {email} END"
    );
    let audience = format!(
        "SELECT profile_id AS __profile_id, {} AS \"Email\", {} AS \"Phone\", {} AS \"First Name\", \
         {} AS \"Last Name\", upper(trim(country)) AS \"Country\", trim(zip) AS \"Zip\" \
         FROM read_parquet({files:?}) WHERE is_known AND consent_ads IS TRUE \
         AND ({} IS NOT NULL OR {} IS NOT NULL)",
        h(&google_email),
        h("regexp_replace(phone, '[^0-9+]', '', 'g')"),
        h("lower(trim(first_name))"),
        h("lower(trim(last_name))"),
        h(&google_email),
        h("regexp_replace(phone, '[^0-9+]', '', 'g')"),
    );
    let script = format!(
        "import duckdb, time\n\
         con = duckdb.connect()\n\
         t = time.time()\n\
         con.execute(\"\"\"CREATE TEMP TABLE cur AS {audience} ORDER BY 1\"\"\")\n\
         con.execute(\"\"\"CREATE TEMP TABLE prev AS SELECT * FROM read_parquet('{state}')\"\"\")\n\
         con.execute(\"\"\"COPY (SELECT * EXCLUDE (__profile_id) FROM cur) TO '{out}/audience.csv' (HEADER)\"\"\")\n\
         con.execute(\"\"\"COPY (SELECT * EXCLUDE (__profile_id) FROM cur WHERE __profile_id NOT IN (SELECT __profile_id FROM prev)) TO '{out}/adds.csv' (HEADER)\"\"\")\n\
         con.execute(\"\"\"COPY (SELECT * EXCLUDE (__profile_id) FROM prev WHERE __profile_id NOT IN (SELECT __profile_id FROM cur)) TO '{out}/removes.csv' (HEADER)\"\"\")\n\
         n = con.execute('SELECT count(*) FROM cur').fetchone()[0]\n\
         print(f'| DuckDB, the second run | {{n}} | | | {{time.time() - t:.2f}} s |')\n",
        state = state.display(),
        out = out.display(),
    );
    let result = std::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&result.stdout));
    if !result.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&result.stderr));
    }
}
