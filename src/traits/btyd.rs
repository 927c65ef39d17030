//! Buy-till-you-die models, as the `lifetimes` package defines them: BG/NBD (Fader, Hardie & Lee
//! 2005) for the number of repeat purchases and the probability that a customer is still
//! active, and Gamma-Gamma (Fader, Hardie & Lee 2005b) for the average spend per purchase.
//! Both are fitted by maximum likelihood (see `fit`) with log-likelihoods computed in log space
//! (`ln_gamma`, a log-sum-exp) so that large frequencies do not overflow, and with their
//! analytic gradients.

use libm::lgamma;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::traits::fit::{Likelihood, fit, par_sum};
use crate::traits::special::{digamma, hyp2f1};

/// One customer's purchase history in the units of the model (days or weeks): `x` repeat
/// purchases, the last at `t_x` after the first, observed for `t` after the first, spending
/// `zbar` on average per repeat purchase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct History {
    pub x: f64,
    pub t_x: f64,
    pub t: f64,
    pub zbar: f64,
}

/// Fitted BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
    pub log_likelihood: f64,
    /// The L2 penalty the fit needed (0: none); see `fit_bgnbd`.
    pub penalizer: f64,
}

/// Fitted Gamma-Gamma parameters (`gamma` is the scale the literature calls v).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GammaGamma {
    pub p: f64,
    pub q: f64,
    pub gamma: f64,
    pub log_likelihood: f64,
    /// The L2 penalty the fit needed (0: none).
    pub penalizer: f64,
}

/// BG/NBD data, compressed: customers with the same (x, t_x, T) are one group with a weight,
/// and the terms that depend only on x or only on a time are computed once per distinct value.
/// With days as the unit, a million buyers have a few hundred distinct x and times.
struct BgNbdData {
    n: usize,
    xs: Vec<f64>,
    /// Customers per distinct x.
    x_weight: Vec<f64>,
    times: Vec<f64>,
    groups: Vec<BgGroup>,
}

struct BgGroup {
    x: u32,
    t_x: u32,
    t: u32,
    weight: f64,
}

/// Index of each distinct value of `values`, in first-seen order.
struct Distinct {
    values: Vec<f64>,
    index: std::collections::HashMap<u64, u32>,
}

impl Distinct {
    fn new() -> Distinct {
        Distinct {
            values: Vec::new(),
            index: Default::default(),
        }
    }
    fn of(&mut self, v: f64) -> u32 {
        *self.index.entry(v.to_bits()).or_insert_with(|| {
            self.values.push(v);
            (self.values.len() - 1) as u32
        })
    }
}

impl BgNbdData {
    fn new(data: &[History]) -> BgNbdData {
        let (mut xs, mut times) = (Distinct::new(), Distinct::new());
        let mut groups: Vec<BgGroup> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for h in data {
            let key = (xs.of(h.x), times.of(h.t_x), times.of(h.t));
            let at = *seen.entry(key).or_insert_with(|| {
                groups.push(BgGroup {
                    x: key.0,
                    t_x: key.1,
                    t: key.2,
                    weight: 0.0,
                });
                groups.len() - 1
            });
            groups[at].weight += 1.0;
        }
        let mut x_weight = vec![0.0; xs.values.len()];
        for g in &groups {
            x_weight[g.x as usize] += g.weight;
        }
        BgNbdData {
            n: data.len(),
            xs: xs.values,
            x_weight,
            times: times.values,
            groups,
        }
    }
}

impl Likelihood for BgNbdData {
    fn observations(&self) -> usize {
        self.n
    }

    /// ln L = Σ [A(x) + S], A(x) = ln Γ(r+x) - ln Γ(r) + r ln α + ln B(a, b+x) - ln B(a, b),
    /// S = ln(e^u + e^v) with u = -(r+x) ln(α+T) and, for x > 0, v = ln a - ln(b+x-1)
    /// - (r+x) ln(α+t_x) (for x = 0, S = u).
    fn ll_grad(&self, p: &[f64], grad: &mut [f64]) -> f64 {
        let (r, alpha, a, b) = (p[0], p[1], p[2], p[3]);
        let (ln_alpha, ln_a) = (alpha.ln(), a.ln());
        let common = lgamma(a + b) - lgamma(r) - lgamma(b);
        let (psi_r, psi_ab, psi_b) = (digamma(r), digamma(a + b), digamma(b));
        let mut ll = 0.0;
        // Per distinct x: v's constant part and its derivatives in a and b.
        let mut v0 = Vec::with_capacity(self.xs.len());
        let mut dv_db = Vec::with_capacity(self.xs.len());
        for (k, &x) in self.xs.iter().enumerate() {
            let w = self.x_weight[k];
            ll += w * (lgamma(r + x) + r * ln_alpha + lgamma(b + x) - lgamma(a + b + x) + common);
            grad[0] += w * (digamma(r + x) - psi_r + ln_alpha);
            grad[1] += w * r / alpha;
            grad[2] += w * (psi_ab - digamma(a + b + x));
            grad[3] += w * (psi_ab + digamma(b + x) - psi_b - digamma(a + b + x));
            v0.push(if x > 0.0 {
                ln_a - (b + x - 1.0).ln()
            } else {
                0.0
            });
            dv_db.push(if x > 0.0 { -1.0 / (b + x - 1.0) } else { 0.0 });
        }
        let ln_t: Vec<f64> = self.times.iter().map(|t| (alpha + t).ln()).collect();
        let inv_t: Vec<f64> = self.times.iter().map(|t| 1.0 / (alpha + t)).collect();
        let (s, g) = par_sum::<_, 4>(&self.groups, |groups, g| {
            let mut s = 0.0;
            for grp in groups {
                let (xi, w) = (grp.x as usize, grp.weight);
                let x = self.xs[xi];
                let rx = r + x;
                let (lt, it) = (ln_t[grp.t as usize], inv_t[grp.t as usize]);
                let u = -rx * lt;
                if x == 0.0 {
                    s += w * u;
                    g[0] -= w * lt;
                    g[1] -= w * rx * it;
                    continue;
                }
                let (ltx, itx) = (ln_t[grp.t_x as usize], inv_t[grp.t_x as usize]);
                let v = v0[xi] - rx * ltx;
                // ln(e^u + e^v) with one exp: the weights of the two terms are 1/(1+e) and
                // e/(1+e) for the larger and the smaller.
                let e = (-(u - v).abs()).exp();
                let (hi, lo) = (1.0 / (1.0 + e), e / (1.0 + e));
                let (wu, wv) = if u >= v { (hi, lo) } else { (lo, hi) };
                s += w * (u.max(v) + e.ln_1p());
                g[0] -= w * (wu * lt + wv * ltx);
                g[1] -= w * rx * (wu * it + wv * itx);
                g[2] += w * wv / a;
                g[3] += w * wv * dv_db[xi];
            }
            s
        });
        for k in 0..4 {
            grad[k] += g[k];
        }
        ll + s
    }
}

/// Gamma-Gamma data: the repeat customers with positive spend, as (x, x·z̄) with sums of
/// ln z̄ per distinct x, so that one evaluation costs one logarithm per customer.
struct GammaGammaData {
    xs: Vec<f64>,
    x_weight: Vec<f64>,
    /// Σ ln z̄ per distinct x.
    x_ln_spend: Vec<f64>,
    customers: Vec<(u32, f64)>,
}

impl GammaGammaData {
    fn new(usable: &[&History]) -> GammaGammaData {
        let mut xs = Distinct::new();
        let mut customers = Vec::with_capacity(usable.len());
        let (mut x_weight, mut x_ln_spend) = (Vec::new(), Vec::new());
        for h in usable {
            let k = xs.of(h.x) as usize;
            if k == x_weight.len() {
                x_weight.push(0.0);
                x_ln_spend.push(0.0);
            }
            x_weight[k] += 1.0;
            x_ln_spend[k] += h.zbar.ln();
            customers.push((k as u32, h.x * h.zbar));
        }
        GammaGammaData {
            xs: xs.values,
            x_weight,
            x_ln_spend,
            customers,
        }
    }
}

impl Likelihood for GammaGammaData {
    fn observations(&self) -> usize {
        self.customers.len()
    }

    /// ln L = Σ [ln Γ(px+q) - ln Γ(px) - ln Γ(q) + q ln v + (px-1) ln z̄ + px ln x
    /// - (px+q) ln(x z̄ + v)].
    fn ll_grad(&self, params: &[f64], grad: &mut [f64]) -> f64 {
        let (p, q, v) = (params[0], params[1], params[2]);
        let (ln_v, lg_q, psi_q) = (v.ln(), lgamma(q), digamma(q));
        let mut ll = 0.0;
        for (k, &x) in self.xs.iter().enumerate() {
            let (w, sl) = (self.x_weight[k], self.x_ln_spend[k]);
            let px = p * x;
            ll +=
                w * (lgamma(px + q) - lgamma(px) - lg_q + q * ln_v + px * x.ln()) + (px - 1.0) * sl;
            grad[0] += w * x * (digamma(px + q) - digamma(px) + x.ln()) + x * sl;
            grad[1] += w * (digamma(px + q) - psi_q + ln_v);
            grad[2] += w * q / v;
        }
        let (s, g) = par_sum::<_, 3>(&self.customers, |customers, g| {
            let mut s = 0.0;
            for &(k, xm) in customers {
                let x = self.xs[k as usize];
                let pxq = p * x + q;
                let l = (xm + v).ln();
                s -= pxq * l;
                g[0] -= x * l;
                g[1] -= l;
                g[2] -= pxq / (xm + v);
            }
            s
        });
        for k in 0..3 {
            grad[k] += g[k];
        }
        ll + s
    }
}

/// Fits BG/NBD to the histories (every customer, one-time buyers included).
pub fn fit_bgnbd(data: &[History]) -> Result<BgNbd> {
    if data.is_empty() {
        return Err(Error::Input("BG/NBD: no customers to fit".into()));
    }
    if !data.iter().any(|h| h.x > 0.0) {
        return Err(Error::Input(
            "BG/NBD: no customer has a repeat purchase, so repeat behaviour cannot be fitted"
                .into(),
        ));
    }
    let model = BgNbdData::new(data);
    let (p, penalizer) = fit("BG/NBD", &model, &[1.0, 1.0, 1.0, 1.0])?;
    Ok(BgNbd {
        r: p[0],
        alpha: p[1],
        a: p[2],
        b: p[3],
        log_likelihood: model.ll_grad(&p, &mut [0.0; 4]),
        penalizer,
    })
}

/// Fits Gamma-Gamma to the customers with repeat purchases and positive average spend; the
/// others are left out, as the model is defined for them only.
pub fn fit_gamma_gamma(data: &[History]) -> Result<GammaGamma> {
    let usable: Vec<&History> = data.iter().filter(|h| h.x > 0.0 && h.zbar > 0.0).collect();
    if usable.len() < 2 {
        return Err(Error::Input(format!(
            "Gamma-Gamma: {} customer(s) with repeat purchases and positive spend; at least 2 are needed",
            usable.len()
        )));
    }
    let model = GammaGammaData::new(&usable);
    let (p, penalizer) = fit("Gamma-Gamma", &model, &[1.0, 1.0, 1.0])?;
    Ok(GammaGamma {
        p: p[0],
        q: p[1],
        gamma: p[2],
        log_likelihood: model.ll_grad(&p, &mut [0.0; 3]),
        penalizer,
    })
}

impl BgNbd {
    /// Probability that the customer is still active at the end of observation.
    pub fn p_alive(&self, h: &History) -> f64 {
        if h.x == 0.0 {
            return 1.0;
        }
        let ln_ratio = (self.r + h.x) * ((self.alpha + h.t) / (self.alpha + h.t_x)).ln();
        1.0 / (1.0 + (self.a / (self.b + h.x - 1.0)) * ln_ratio.exp())
    }

    /// Expected number of purchases in the next `t` units, given the history.
    pub fn expected_purchases(&self, t: f64, h: &History) -> f64 {
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        let x = h.x;
        let aa = r + x;
        let bb = b + x;
        let cc = a + b + x - 1.0;
        let z = t / (alpha + h.t + t);
        let first = (a + b + x - 1.0) / (a - 1.0);
        let hyp = hyp2f1(aa, bb, cc, z);
        let second = 1.0 - hyp * ((alpha + h.t) / (alpha + t + h.t)).powf(r + x);
        let denominator = if x > 0.0 {
            1.0 + (a / (b + x - 1.0)) * ((alpha + h.t) / (alpha + h.t_x)).powf(r + x)
        } else {
            1.0
        };
        first * second / denominator
    }
}

impl GammaGamma {
    /// Expected average spend per purchase, given the history (the population mean for
    /// customers without repeat purchases).
    pub fn expected_spend(&self, h: &History) -> f64 {
        let (p, q, v) = (self.p, self.q, self.gamma);
        if h.x > 0.0 && h.zbar > 0.0 {
            (p * (v + h.x * h.zbar)) / (p * h.x + q - 1.0)
        } else {
            p * v / (q - 1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook per-customer log-likelihoods, to check the compressed ones against.
    fn bgnbd_ll(p: &[f64], h: &History) -> f64 {
        let (r, alpha, a, b, x) = (p[0], p[1], p[2], p[3], h.x);
        let a1 = lgamma(r + x) - lgamma(r) + r * alpha.ln();
        let a2 = lgamma(a + b) + lgamma(b + x) - lgamma(b) - lgamma(a + b + x);
        let a3 = -(r + x) * (alpha + h.t).ln();
        let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + h.t_x).ln();
        a1 + a2
            + if x > 0.0 {
                (a3.exp() + a4.exp()).ln()
            } else {
                a3
            }
    }

    fn gamma_gamma_ll(params: &[f64], h: &History) -> f64 {
        let (p, q, v, x, m) = (params[0], params[1], params[2], h.x, h.zbar);
        lgamma(p * x + q) - lgamma(p * x) - lgamma(q)
            + q * v.ln()
            + (p * x - 1.0) * m.ln()
            + (p * x) * x.ln()
            - (p * x + q) * (x * m + v).ln()
    }

    fn sample() -> Vec<History> {
        // Repeated histories (so that groups have weights), one-time buyers, varied spend.
        (0..300)
            .map(|i| {
                let x = (i % 7) as f64;
                History {
                    x,
                    t_x: if x > 0.0 { (i % 23) as f64 + 1.5 } else { 0.0 },
                    t: 30.0 + (i % 11) as f64,
                    zbar: if x > 0.0 {
                        5.0 + (i % 13) as f64 * 3.7
                    } else {
                        0.0
                    },
                }
            })
            .collect()
    }

    /// The value must equal the direct sum, and the gradient a central difference.
    fn check(model: &dyn Likelihood, direct: impl Fn(&[f64]) -> f64, at: &[f64]) {
        let mut grad = vec![0.0; at.len()];
        let ll = model.ll_grad(at, &mut grad);
        let want = direct(at);
        assert!((ll - want).abs() < 1e-9 * want.abs(), "{ll} vs {want}");
        for k in 0..at.len() {
            let h = 1e-6 * at[k];
            let (mut up, mut down) = (at.to_vec(), at.to_vec());
            up[k] += h;
            down[k] -= h;
            let numeric = (direct(&up) - direct(&down)) / (2.0 * h);
            assert!(
                (grad[k] - numeric).abs() < 1e-5 * numeric.abs().max(1.0),
                "parameter {k}: analytic {} numeric {numeric}",
                grad[k]
            );
        }
    }

    #[test]
    fn compressed_likelihoods_and_gradients_match_the_textbook_ones() {
        let data = sample();
        let bg = BgNbdData::new(&data);
        assert!(bg.groups.len() < data.len());
        for at in [[0.24, 4.4, 0.79, 2.4], [1.3, 0.7, 3.0, 0.2]] {
            check(&bg, |p| data.iter().map(|h| bgnbd_ll(p, h)).sum(), &at);
        }
        let usable: Vec<&History> = data.iter().filter(|h| h.x > 0.0).collect();
        let gg = GammaGammaData::new(&usable);
        for at in [[6.25, 3.74, 15.44], [0.5, 1.2, 100.0]] {
            check(
                &gg,
                |p| usable.iter().map(|h| gamma_gamma_ll(p, h)).sum(),
                &at,
            );
        }
    }

    #[test]
    fn one_time_buyers_are_alive_and_repeaters_fade() {
        let m = BgNbd {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
            log_likelihood: 0.0,
            penalizer: 0.0,
        };
        let once = History {
            x: 0.0,
            t_x: 0.0,
            t: 38.86,
            zbar: 0.0,
        };
        assert_eq!(m.p_alive(&once), 1.0);
        let recent = History {
            x: 2.0,
            t_x: 38.0,
            t: 38.86,
            zbar: 0.0,
        };
        let lapsed = History {
            x: 2.0,
            t_x: 2.0,
            t: 38.86,
            zbar: 0.0,
        };
        // 1 / (1 + a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x)), worked by hand: 0.805 and 0.056.
        assert!(
            (m.p_alive(&recent) - 0.805).abs() < 0.002,
            "{}",
            m.p_alive(&recent)
        );
        assert!(
            (m.p_alive(&lapsed) - 0.056).abs() < 0.002,
            "{}",
            m.p_alive(&lapsed)
        );
        // The published value for x = 2, t_x = 30.43, T = 38.86 over 39 weeks.
        let h = History {
            x: 2.0,
            t_x: 30.43,
            t: 38.86,
            zbar: 0.0,
        };
        assert!((m.expected_purchases(39.0, &h) - 1.226).abs() < 0.005);
    }
}
