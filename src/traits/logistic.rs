//! L2-regularised logistic regression for propensity scores, and the metrics that judge it.
//! Features are standardised on the training rows (constant ones are dropped to zero weight);
//! the penalised mean log-loss is minimised with L-BFGS (see `fit::minimise`), which for a
//! convex loss reaches the same optimum as IRLS without forming the Hessian.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::traits::fit::{Cost, minimise};

/// A fitted model: standardisation and coefficients, the intercept first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logistic {
    pub features: Vec<String>,
    pub mean: Vec<f64>,
    pub sd: Vec<f64>,
    pub intercept: f64,
    /// Per standardised feature, in `features` order.
    pub coefficients: Vec<f64>,
    pub l2: f64,
}

/// Rows of features, row-major.
pub struct Matrix<'a> {
    pub values: &'a [f64],
    pub columns: usize,
}

impl Matrix<'_> {
    pub fn rows(&self) -> usize {
        self.values.len() / self.columns.max(1)
    }
    fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.columns..(i + 1) * self.columns]
    }
}

struct Loss<'a> {
    x: Vec<f64>,
    columns: usize,
    y: &'a [bool],
    l2: f64,
}

const CHUNK: usize = 8_192;

impl Cost for Loss<'_> {
    /// Mean log-loss + l2/2 · |β|² (the intercept is not penalised); β[0] is the intercept.
    fn cost_grad(&self, beta: &[f64], grad: &mut [f64]) -> f64 {
        let d = self.columns;
        let n = self.y.len();
        let parts: Vec<(f64, Vec<f64>)> = self
            .x
            .par_chunks(CHUNK * d)
            .enumerate()
            .map(|(c, rows)| {
                let mut g = vec![0.0; d + 1];
                let mut loss = 0.0;
                for (i, row) in rows.chunks(d).enumerate() {
                    let z = beta[0] + dot(&beta[1..], row);
                    let y = self.y[c * CHUNK + i];
                    loss += softplus(z) - if y { z } else { 0.0 };
                    let r = sigmoid(z) - if y { 1.0 } else { 0.0 };
                    g[0] += r;
                    for (gk, xk) in g[1..].iter_mut().zip(row) {
                        *gk += r * xk;
                    }
                }
                (loss, g)
            })
            .collect();
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        for (l, g) in parts {
            loss += l;
            for (a, b) in grad.iter_mut().zip(&g) {
                *a += b;
            }
        }
        let n = n.max(1) as f64;
        loss /= n;
        grad.iter_mut().for_each(|g| *g /= n);
        for k in 1..=d {
            loss += 0.5 * self.l2 * beta[k] * beta[k];
            grad[k] += self.l2 * beta[k];
        }
        loss
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Logistic {
    /// Fits to rows `x` with labels `y`. `l2` is the penalty on the mean loss
    /// (scikit-learn's default C = 1 is `l2 = 1 / rows`).
    pub fn fit(features: Vec<String>, x: &Matrix, y: &[bool], l2: f64) -> Result<Logistic> {
        let (n, d) = (x.rows(), x.columns);
        if n != y.len() || d != features.len() {
            return Err(Error::Input(format!(
                "logistic regression: {n} rows, {} labels, {d} columns, {} names",
                y.len(),
                features.len()
            )));
        }
        let positives = y.iter().filter(|v| **v).count();
        if positives == 0 || positives == n {
            return Err(Error::Input(format!(
                "all {n} training profiles have the same label ({}), so there is nothing to learn",
                if positives == 0 {
                    "negative"
                } else {
                    "positive"
                }
            )));
        }
        let mut mean = vec![0.0; d];
        for i in 0..n {
            for (m, v) in mean.iter_mut().zip(x.row(i)) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut sd = vec![0.0; d];
        for i in 0..n {
            for ((s, v), m) in sd.iter_mut().zip(x.row(i)).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        // A constant feature gets sd 0 and standardises to 0: it carries no information.
        let sd: Vec<f64> = sd.iter().map(|s| (s / n as f64).sqrt()).collect();
        let mut z = Vec::with_capacity(n * d);
        for i in 0..n {
            z.extend(
                x.row(i)
                    .iter()
                    .enumerate()
                    .map(|(k, v)| scale(*v, mean[k], sd[k])),
            );
        }
        let loss = Loss {
            x: z,
            columns: d,
            y,
            l2,
        };
        let rate = positives as f64 / n as f64;
        let mut start = vec![0.0; d + 1];
        start[0] = (rate / (1.0 - rate)).ln();
        let best = minimise("logistic regression", &loss, start, 1e-6, 500)?;
        if best.grad_norm > 1e-4 {
            return Err(Error::Input(format!(
                "logistic regression did not converge (gradient norm {:.2e})",
                best.grad_norm
            )));
        }
        Ok(Logistic {
            features,
            mean,
            sd,
            intercept: best.x[0],
            coefficients: best.x[1..].to_vec(),
            l2,
        })
    }

    /// The predicted probability for one row of raw (unstandardised) features.
    pub fn predict(&self, row: &[f64]) -> f64 {
        let z: f64 = row
            .iter()
            .enumerate()
            .map(|(k, v)| self.coefficients[k] * scale(*v, self.mean[k], self.sd[k]))
            .sum();
        sigmoid(self.intercept + z)
    }
}

fn scale(v: f64, mean: f64, sd: f64) -> f64 {
    if sd > 0.0 { (v - mean) / sd } else { 0.0 }
}

/// How well predicted probabilities match outcomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub rows: u64,
    pub positives: u64,
    pub auc: f64,
    pub log_loss: f64,
    /// Ten bins of equal size by predicted probability, lowest first.
    pub calibration: Vec<CalibrationBin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub rows: u64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// AUC (the Mann-Whitney statistic, ties counted half), mean log-loss and a calibration table.
pub fn evaluate(predicted: &[f64], actual: &[bool]) -> Metrics {
    let n = predicted.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| predicted[*a].total_cmp(&predicted[*b]));
    // Average ranks over runs of equal predictions.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && predicted[order[j + 1]] == predicted[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += rank * order[i..=j].iter().filter(|k| actual[**k]).count() as f64;
        i = j + 1;
    }
    let pos = actual.iter().filter(|v| **v).count() as f64;
    let neg = n as f64 - pos;
    let auc = (rank_sum_pos - pos * (pos + 1.0) / 2.0) / (pos * neg);
    let eps = 1e-15;
    let log_loss = predicted
        .iter()
        .zip(actual)
        .map(|(p, y)| {
            let p = p.clamp(eps, 1.0 - eps);
            -if *y { p.ln() } else { (1.0 - p).ln() }
        })
        .sum::<f64>()
        / n.max(1) as f64;
    let bins = 10.min(n);
    let calibration = (0..bins)
        .map(|b| {
            let rows = &order[b * n / bins..(b + 1) * n / bins];
            let len = rows.len().max(1) as f64;
            CalibrationBin {
                rows: rows.len() as u64,
                mean_predicted: rows.iter().map(|k| predicted[*k]).sum::<f64>() / len,
                observed_rate: rows.iter().filter(|k| actual[**k]).count() as f64 / len,
            }
        })
        .collect();
    Metrics {
        rows: n as u64,
        positives: pos as u64,
        auc,
        log_loss,
        calibration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn auc_counts_ordered_pairs_and_half_ties() {
        let p = [0.1, 0.4, 0.35, 0.8, 0.4];
        let y = [false, false, true, true, true];
        // Pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, *) 2 wins,
        // (0.4, 0.1) win, (0.4, 0.4) tie: (1 + 0 + 2 + 1 + 0.5) / 6.
        let m = evaluate(&p, &y);
        assert!((m.auc - 4.5 / 6.0).abs() < 1e-12, "{}", m.auc);
        let want = -(0.9f64.ln() + 0.6f64.ln() + 0.35f64.ln() + 0.8f64.ln() + 0.4f64.ln()) / 5.0;
        assert!((m.log_loss - want).abs() < 1e-12);
        assert_eq!(m.calibration.iter().map(|b| b.rows).sum::<u64>(), 5);
    }

    #[test]
    fn recovers_known_coefficients_and_calibrates() {
        // y ~ Bernoulli(sigmoid(-1 + 2 x1 - 0.5 x2)), x3 pure noise, x4 constant.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 40_000;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (a, b, c): (f64, f64, f64) = (rng.random(), rng.random(), rng.random());
            let (x1, x2, x3) = (a * 2.0 - 1.0, b * 4.0, c);
            x.extend([x1, x2, x3, 5.0]);
            y.push(rng.random::<f64>() < sigmoid(-1.0 + 2.0 * x1 - 0.5 * x2));
        }
        let names = ["x1", "x2", "x3", "x4"].map(String::from).to_vec();
        let m = Logistic::fit(
            names,
            &Matrix {
                values: &x,
                columns: 4,
            },
            &y,
            1e-6,
        )
        .unwrap();
        // Back to the raw scale: β_raw = β / sd.
        let raw: Vec<f64> = (0..4)
            .map(|k| {
                if m.sd[k] > 0.0 {
                    m.coefficients[k] / m.sd[k]
                } else {
                    0.0
                }
            })
            .collect();
        assert!((raw[0] - 2.0).abs() < 0.1, "{raw:?}");
        assert!((raw[1] + 0.5).abs() < 0.05, "{raw:?}");
        assert!(raw[2].abs() < 0.15, "{raw:?}");
        assert_eq!(raw[3], 0.0);
        let p: Vec<f64> = x.chunks(4).map(|r| m.predict(r)).collect();
        let metrics = evaluate(&p, &y);
        assert!(metrics.auc > 0.75, "{}", metrics.auc);
        for bin in &metrics.calibration {
            assert!(
                (bin.mean_predicted - bin.observed_rate).abs() < 0.03,
                "{bin:?}"
            );
        }
    }

    #[test]
    fn one_label_only_is_an_error() {
        let x = [1.0, 2.0];
        let err = Logistic::fit(
            vec!["a".into()],
            &Matrix {
                values: &x,
                columns: 1,
            },
            &[true, true],
            0.0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("same label (positive)"), "{err}");
    }
}
