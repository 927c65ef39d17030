//! `tribe traits report`: what the last `traits compute` fitted and produced — each model's
//! parameters and metrics (from `trait_models`), the propensity models' calibration, and the
//! distribution of every numeric trait and of the RFM groups (from `traits`).

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::workspace::Workspace;

#[derive(Debug, Serialize)]
pub struct Report {
    pub as_of: String,
    pub models: Vec<ModelRow>,
    pub calibration: Vec<CalibrationRow>,
    pub distributions: Vec<Distribution>,
    pub rfm_groups: Vec<GroupRow>,
}

/// One model: the parameters and metrics that matter, as text, and the full JSON.
#[derive(Debug, Serialize)]
pub struct ModelRow {
    pub model: String,
    pub kind: String,
    pub summary: String,
    pub parameters: serde_json::Value,
    pub metrics: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct CalibrationRow {
    pub model: String,
    pub bin: u32,
    pub rows: u64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

#[derive(Debug, Serialize)]
pub struct Distribution {
    pub r#trait: String,
    pub profiles: u64,
    pub nulls: u64,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub p10: Option<f64>,
    pub p25: Option<f64>,
    pub median: Option<f64>,
    pub p75: Option<f64>,
    pub p90: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct GroupRow {
    pub rfm_segment: String,
    pub profiles: u64,
    pub share: f64,
}

pub async fn report(ws: &Workspace) -> Result<Report> {
    let (ctx, tables) = crate::sql::session(ws).await?;
    if !tables.iter().any(|t| t.name == "trait_models") {
        return Err(Error::Input(
            "no traits computed yet: run `tribe traits compute` first".into(),
        ));
    }
    let batches = ctx
        .sql("SELECT model, kind, CAST(as_of AS VARCHAR), parameters, metrics FROM trait_models ORDER BY kind, model")
        .await?
        .collect()
        .await?;
    let mut as_of = String::new();
    let (mut models, mut calibration) = (Vec::new(), Vec::new());
    for b in &batches {
        let text = |i: usize| arrow::compute::cast(b.column(i), &DataType::Utf8);
        let cols = (0..5)
            .map(text)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let s = |c: usize, r: usize| cols[c].as_string::<i32>().value(r).to_string();
        for r in 0..b.num_rows() {
            as_of = s(2, r);
            let parameters: serde_json::Value = serde_json::from_str(&s(3, r)).unwrap_or_default();
            let metrics: serde_json::Value = serde_json::from_str(&s(4, r)).unwrap_or_default();
            let model = s(0, r);
            if let Some(bins) = metrics["holdout"]["calibration"].as_array() {
                for (i, bin) in bins.iter().enumerate() {
                    calibration.push(CalibrationRow {
                        model: model.clone(),
                        bin: i as u32 + 1,
                        rows: bin["rows"].as_u64().unwrap_or(0),
                        mean_predicted: round(bin["mean_predicted"].as_f64().unwrap_or(0.0)),
                        observed_rate: round(bin["observed_rate"].as_f64().unwrap_or(0.0)),
                    });
                }
            }
            models.push(ModelRow {
                summary: summary(&s(1, r), &parameters, &metrics),
                model,
                kind: s(1, r),
                parameters,
                metrics,
            });
        }
    }
    let provider = ctx.table_provider("traits").await?;
    let numeric: Vec<String> = provider
        .schema()
        .fields()
        .iter()
        .filter(|f| f.data_type().is_numeric())
        .map(|f| f.name().clone())
        .collect();
    // Every numeric trait in one read of the table.
    let mut distributions = Vec::new();
    if !numeric.is_empty() {
        let select: Vec<String> = numeric
            .iter()
            .map(|n| format!("CAST({} AS DOUBLE)", crate::sql::ident(n)))
            .collect();
        let batches = ctx
            .sql(&format!("SELECT {} FROM traits", select.join(", ")))
            .await?
            .collect()
            .await?;
        for (k, name) in numeric.into_iter().enumerate() {
            let mut values = Vec::new();
            let mut nulls = 0;
            for b in &batches {
                let a = b.column(k).as_primitive::<Float64Type>();
                nulls += a.null_count() as u64;
                values.extend(a.iter().flatten());
            }
            distributions.push(distribution(name, values, nulls));
        }
    }
    let groups = ctx
        .sql("SELECT rfm_segment, count(*) FROM traits WHERE rfm_segment IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1")
        .await?
        .collect()
        .await?;
    let mut rfm_groups = Vec::new();
    for b in &groups {
        let names = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let counts = arrow::compute::cast(b.column(1), &DataType::UInt64)?;
        let counts = counts.as_primitive::<arrow::datatypes::UInt64Type>();
        for (i, n) in names.as_string::<i32>().iter().enumerate() {
            rfm_groups.push(GroupRow {
                rfm_segment: n.unwrap_or_default().to_string(),
                profiles: counts.value(i),
                share: 0.0,
            });
        }
    }
    let buyers: u64 = rfm_groups.iter().map(|g| g.profiles).sum();
    for g in &mut rfm_groups {
        g.share = round(g.profiles as f64 / buyers.max(1) as f64);
    }
    Ok(Report {
        as_of,
        models,
        calibration,
        distributions,
        rfm_groups,
    })
}

fn round(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

fn summary(kind: &str, p: &serde_json::Value, m: &serde_json::Value) -> String {
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
    match kind {
        "bgnbd" => format!(
            "r {} alpha {} a {} b {} penalizer {} log-likelihood {}",
            f(&p["r"]),
            f(&p["alpha"]),
            f(&p["a"]),
            f(&p["b"]),
            f(&p["penalizer"]),
            f(&m["log_likelihood"])
        ),
        "gamma_gamma" => format!(
            "p {} q {} gamma {} penalizer {} log-likelihood {}",
            f(&p["p"]),
            f(&p["q"]),
            f(&p["gamma"]),
            f(&p["penalizer"]),
            f(&m["log_likelihood"])
        ),
        _ => format!(
            "{} {} in {} days; holdout AUC {} log-loss {} on {} profiles (base rate {}); trained on {}",
            p["event"].as_str().unwrap_or("?"),
            p["predict"].as_str().unwrap_or("?"),
            p["horizon_days"],
            f(&m["holdout"]["auc"]),
            f(&m["holdout"]["log_loss"]),
            m["holdout"]["rows"],
            f(&serde_json::json!(
                m["holdout"]["positives"].as_f64().unwrap_or(0.0)
                    / m["holdout"]["rows"].as_f64().unwrap_or(1.0)
            )),
            m["training_rows"]
        ),
    }
}

fn distribution(name: String, mut values: Vec<f64>, nulls: u64) -> Distribution {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let q = |p: f64| -> Option<f64> {
        (n > 0).then(|| round(values[((n - 1) as f64 * p).round() as usize]))
    };
    Distribution {
        r#trait: name,
        profiles: n as u64 + nulls,
        nulls,
        mean: (n > 0).then(|| round(values.iter().sum::<f64>() / n as f64)),
        min: q(0.0),
        p10: q(0.1),
        p25: q(0.25),
        median: q(0.5),
        p75: q(0.75),
        p90: q(0.9),
        max: q(1.0),
    }
}
