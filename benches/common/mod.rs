//! Helpers shared by the whole-pipeline benchmarks.

use std::time::Instant;

/// Seconds of the best of three runs of a query (warm).
pub async fn time_query(ctx: &datafusion::prelude::SessionContext, q: &str) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        ctx.sql(q).await.unwrap().collect().await.unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}
