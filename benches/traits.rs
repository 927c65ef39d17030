//! Computed-traits benchmark (run with `cargo bench --bench traits`):
//! - the CDNOW fits (BG/NBD and Gamma-Gamma) on the sample and on the master file, as
//!   `tribe traits fit-cdnow` runs them, best of five;
//! - `traits compute` on a demo workspace of `TRIBE_BENCH_PEOPLE` people (default 100,000),
//!   with the demo's two propensity models, timed per phase, best of two.
//!
//! The workspace is shared with the segment benchmark when `TRIBE_BENCH_DIR` points both at
//! the same folder. Prints Markdown tables for the README. DuckDB has no counterpart to these
//! models, so there is no side-by-side here.

use std::path::Path;
use std::time::Instant;

use tribe::workspace::Workspace;

mod common;

fn main() {
    tribe::tune_allocator();
    let people = common::env_number("TRIBE_BENCH_PEOPLE", 100_000);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cdnow");
    println!("| CDNOW file | customers | BG/NBD + Gamma-Gamma fit (best of 5) |");
    println!("|---|---:|---:|");
    for file in ["CDNOW_sample.txt", "CDNOW_master.txt"] {
        let mut best = f64::MAX;
        let mut customers = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let fit = tribe::traits::cdnow::fit(&data.join(file)).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            customers = fit.counts.customers;
        }
        println!("| {file} | {customers} | {:.3} s |", best);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let as_of = tribe::segment::parse_as_of(Some(tribe::demo::AS_OF)).unwrap();
    let best = runtime.block_on(async {
        let dir = common::demo_workspace("traits", people).await;
        let mut ws = Workspace::open(&dir).unwrap();
        // Workspaces built before the demo declared propensity models get the demo's.
        if ws.config.traits.models.is_empty() {
            ws.config.traits.models = tribe::demo::demo_config("demo").traits.models;
        }
        let mut best: Option<tribe::traits::compute::ComputeReport> = None;
        for _ in 0..2 {
            let report = tribe::traits::compute::compute(&ws, as_of).await.unwrap();
            if best.as_ref().is_none_or(|b| report.seconds < b.seconds) {
                best = Some(report);
            }
        }
        best.unwrap()
    });
    println!();
    println!(
        "traits compute, {} profiles ({} buyers), {} propensity models: {:.1} s",
        best.profiles,
        best.buyers,
        best.models.len(),
        best.seconds
    );
    println!();
    println!("| phase | seconds |");
    println!("|---|---:|");
    for (phase, seconds) in &best.phases {
        println!("| {phase} | {seconds:.2} |");
    }
    for m in &best.models {
        println!(
            "model {}: holdout AUC {:.3}, log-loss {:.3} ({} training rows)",
            m.name, m.auc, m.log_loss, m.training_rows
        );
    }
}
