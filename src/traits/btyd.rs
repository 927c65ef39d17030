//! Buy-till-you-die models, as the `lifetimes` package defines them: BG/NBD (Fader, Hardie & Lee
//! 2005) for the number of repeat purchases and the probability that a customer is still
//! active, and Gamma-Gamma (Fader, Hardie & Lee 2005b) for the average spend per purchase.
//! Both are fitted by maximum likelihood with argmin's Nelder-Mead on log-parameters (so every
//! parameter stays positive), with log-likelihoods computed in log space (`ln_gamma`, a
//! log-sum-exp) so that large frequencies do not overflow.

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::neldermead::NelderMead;
use libm::lgamma;
use serde::Serialize;

use crate::error::{Error, Result};

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

/// Log-likelihood of one customer under BG/NBD.
pub fn bgnbd_ll(r: f64, alpha: f64, a: f64, b: f64, h: &History) -> f64 {
    let x = h.x;
    let a1 = lgamma(r + x) - lgamma(r) + r * alpha.ln();
    let a2 = lgamma(a + b) + lgamma(b + x) - lgamma(b) - lgamma(a + b + x);
    let a3 = -(r + x) * (alpha + h.t).ln();
    if x > 0.0 {
        let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + h.t_x).ln();
        a1 + a2 + log_add_exp(a3, a4)
    } else {
        a1 + a2 + a3
    }
}

fn log_add_exp(u: f64, v: f64) -> f64 {
    let m = u.max(v);
    m + ((u - m).exp() + (v - m).exp()).ln()
}

/// Log-likelihood of one repeat customer under Gamma-Gamma.
pub fn gamma_gamma_ll(p: f64, q: f64, v: f64, h: &History) -> f64 {
    let (x, m) = (h.x, h.zbar);
    lgamma(p * x + q) - lgamma(p * x) - lgamma(q)
        + q * v.ln()
        + (p * x - 1.0) * m.ln()
        + (p * x) * x.ln()
        - (p * x + q) * (x * m + v).ln()
}

struct NegLl<F: Fn(&[f64]) -> f64>(F);

impl<F: Fn(&[f64]) -> f64> CostFunction for NegLl<F> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, log_params: &Vec<f64>) -> std::result::Result<f64, argmin::core::Error> {
        let params: Vec<f64> = log_params.iter().map(|p| p.exp()).collect();
        let ll = (self.0)(&params);
        // Outside the region where the likelihood is defined, a large cost steers the simplex
        // back rather than a NaN that would stall it.
        Ok(if ll.is_finite() { -ll } else { f64::MAX / 4.0 })
    }
}

/// Minimises a negative log-likelihood over positive parameters, from `start`. The cost is
/// the mean over `n` customers, so that the tolerance means the same at any scale.
fn maximise(
    what: &str,
    start: &[f64],
    n: usize,
    ll: impl Fn(&[f64]) -> f64,
) -> Result<(Vec<f64>, f64)> {
    const MAX_ITERS: u64 = 5_000;
    let x0: Vec<f64> = start.iter().map(|p| p.ln()).collect();
    let mut simplex = vec![x0.clone()];
    for i in 0..x0.len() {
        let mut v = x0.clone();
        v[i] += 0.5;
        simplex.push(v);
    }
    let fail = |e: argmin::core::Error| Error::Input(format!("{what}: the optimiser failed: {e}"));
    let solver = NelderMead::new(simplex)
        .with_sd_tolerance(1e-12)
        .map_err(fail)?;
    let scale = n.max(1) as f64;
    let result = Executor::new(NegLl(|p: &[f64]| ll(p) / scale), solver)
        .configure(|state| state.max_iters(MAX_ITERS))
        .run()
        .map_err(fail)?;
    let state = result.state();
    let best = state
        .get_best_param()
        .ok_or_else(|| Error::Input(format!("{what}: the optimiser found no parameters")))?;
    let cost = state.get_best_cost();
    if !cost.is_finite() || cost >= f64::MAX / 8.0 {
        return Err(Error::Input(format!(
            "{what}: the likelihood could not be maximised (no finite value found)"
        )));
    }
    // A parameter running off towards infinity means the likelihood has no finite maximum.
    if state.get_iter() >= MAX_ITERS || best.iter().any(|p| p.abs() > 20.0) {
        return Err(Error::Input(format!(
            "{what}: the optimiser did not converge (the likelihood has no finite maximum)"
        )));
    }
    Ok((best.iter().map(|p| p.exp()).collect(), -cost * scale))
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
    let ll = |p: &[f64]| -> f64 {
        data.iter()
            .map(|h| bgnbd_ll(p[0], p[1], p[2], p[3], h))
            .sum()
    };
    let (p, penalizer) = penalised("BG/NBD", &[1.0, 1.0, 1.0, 1.0], data.len(), &ll)?;
    Ok(BgNbd {
        r: p[0],
        alpha: p[1],
        a: p[2],
        b: p[3],
        log_likelihood: ll(&p),
        penalizer,
    })
}

/// Penalties tried, in order, when the likelihood has no finite maximum (data without visible
/// drop-out drives b to infinity): the `lifetimes` package's L2 `penalizer_coef` on the mean
/// negative log-likelihood, as its users set it.
const PENALTIES: &[f64] = &[0.0, 0.001, 0.01, 0.1];

fn penalised(
    what: &str,
    start: &[f64],
    n: usize,
    ll: &dyn Fn(&[f64]) -> f64,
) -> Result<(Vec<f64>, f64)> {
    let mut last = None;
    for &c in PENALTIES {
        let penalised = |p: &[f64]| ll(p) - n as f64 * c * p.iter().map(|v| v * v).sum::<f64>();
        match maximise(what, start, n, penalised) {
            Ok((p, _)) => return Ok((p, c)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
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
    let ll = |p: &[f64]| -> f64 {
        usable
            .iter()
            .map(|h| gamma_gamma_ll(p[0], p[1], p[2], h))
            .sum()
    };
    let (p, penalizer) = penalised("Gamma-Gamma", &[1.0, 1.0, 1.0], usable.len(), &ll)?;
    Ok(GammaGamma {
        p: p[0],
        q: p[1],
        gamma: p[2],
        log_likelihood: ll(&p),
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

/// Gauss's hypergeometric function 2F1(a, b; c; z) for |z| < 1, by its series.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 0..100_000 {
        let n = n as f64;
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        sum += term;
        if term.abs() < 1e-15 * sum.abs() {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypergeometric_matches_closed_forms() {
        // 2F1(1, 1; 2; z) = -ln(1 - z) / z
        let z: f64 = 0.5;
        assert!((hyp2f1(1.0, 1.0, 2.0, z) - (-(1.0 - z).ln() / z)).abs() < 1e-12);
        // 2F1(a, b; b; z) = (1 - z)^-a
        assert!((hyp2f1(2.5, 3.0, 3.0, 0.3) - 0.7f64.powf(-2.5)).abs() < 1e-12);
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
