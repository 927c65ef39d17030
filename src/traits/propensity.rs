//! Propensity models declared under `[traits.models.<name>]`: the probability that an event
//! happens (or, with `predict = "absent"`, does not happen) in the next `horizon_days`.
//! Training uses a time split: features as of the cutoff (as-of minus the horizon), the label
//! from the window after it. 20% of the profiles (by a hash of the id, so the split is stable
//! across runs) are held out for the metrics; scoring uses features as of the as-of time.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::PropensityModel;
use crate::error::{Error, Result};
use crate::traits::features::Table;
use crate::traits::logistic::{Logistic, Matrix, Metrics, evaluate};

/// Training rows beyond this are sampled (by id hash): a linear model with a hundred features
/// learns nothing more from millions of rows, and training time stays bounded.
pub const MAX_TRAINING_ROWS: usize = 100_000;

/// A trained model with what it was trained on and how well it did on the held-out profiles.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trained {
    pub name: String,
    pub event: String,
    pub predict: String,
    pub horizon_days: u32,
    pub cutoff: String,
    pub training_rows: u64,
    pub training_positive_rate: f64,
    pub holdout: Metrics,
    pub model: Logistic,
}

/// Trains model `name` on `train_table` (features as of `cutoff`) with labels from
/// `happened` (the profiles that had the event after the cutoff), and scores `scoring`.
pub fn train(
    name: &str,
    spec: &PropensityModel,
    default_event: &str,
    cutoff: DateTime<Utc>,
    train_table: &Table,
    happened: &HashSet<String>,
    scoring: &Table,
) -> Result<(Trained, Vec<f64>)> {
    // `predict` is "occurs" or "absent": the config was checked when it was read.
    let event = spec.event.as_deref().unwrap_or(default_event);
    let absent = spec.predict == "absent";
    if train_table.ids.is_empty() {
        return Err(Error::Input(format!(
            "no profile was seen by the training cutoff {} (as-of minus {} days)",
            cutoff.format("%Y-%m-%d"),
            spec.horizon_days
        )));
    }
    let d = train_table.names.len();
    let label = |id: &str| happened.contains(id) != absent;
    let sample = train_table
        .ids
        .len()
        .div_ceil(MAX_TRAINING_ROWS * 5 / 4)
        .max(1) as u64;
    let (mut x, mut y, mut hx, mut hy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, id) in train_table.ids.iter().enumerate() {
        let row = &train_table.values[i * d..(i + 1) * d];
        let h = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
        if h.is_multiple_of(5) {
            hx.extend_from_slice(row);
            hy.push(label(id));
        } else if (h / 5).is_multiple_of(sample) {
            x.extend_from_slice(row);
            y.push(label(id));
        }
    }
    if hy.is_empty() || y.is_empty() {
        return Err(Error::Input(format!(
            "{} profiles by the cutoff are too few to train and hold out",
            train_table.ids.len()
        )));
    }
    let l2 = spec.l2.unwrap_or(1.0 / y.len() as f64);
    let model = Logistic::fit(
        train_table.names.clone(),
        &Matrix {
            values: &x,
            columns: d,
        },
        &y,
        l2,
    )?;
    let predicted: Vec<f64> = hx.chunks(d).map(|r| model.predict(r)).collect();
    let holdout = evaluate(&predicted, &hy);
    let scores = scoring.values.chunks(d).map(|r| model.predict(r)).collect();
    let trained = Trained {
        name: name.to_string(),
        event: event.to_string(),
        predict: spec.predict.clone(),
        horizon_days: spec.horizon_days,
        cutoff: cutoff.to_rfc3339(),
        training_rows: y.len() as u64,
        training_positive_rate: y.iter().filter(|v| **v).count() as f64 / y.len() as f64,
        holdout,
        model,
    };
    Ok((trained, scores))
}
