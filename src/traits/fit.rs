//! Fitting for the traits models: argmin's L-BFGS with a More-Thuente line search
//! (`minimise`), and maximum likelihood with it on log-parameters (`fit`), so every parameter
//! stays positive, with the `lifetimes` package's L2 penalty tried in steps when the
//! likelihood has no finite maximum.

use std::sync::Mutex;

use argmin::core::{CostFunction, Executor, Gradient};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;

use crate::error::{Error, Result};

/// A log-likelihood with its gradient, over positive parameters (not their logs).
pub trait Likelihood: Sync {
    /// Number of observations, so that the optimiser works on a per-observation mean.
    fn observations(&self) -> usize;
    /// The log-likelihood at `p` and, into `grad`, its gradient with respect to `p`.
    fn ll_grad(&self, p: &[f64], grad: &mut [f64]) -> f64;
}

/// Beyond this log-parameter (e^25 ≈ 7e10) the cost is a wall; a fit that ends near it has
/// found no finite maximum.
const WALL: f64 = 25.0;
const DIVERGED: f64 = 20.0;

/// Penalties tried, in order, when the likelihood has no finite maximum (data without visible
/// drop-out drives b to infinity): the `lifetimes` package's L2 `penalizer_coef` on the mean
/// negative log-likelihood, as its users set it.
const PENALTIES: &[f64] = &[0.0, 0.001, 0.01, 0.1];

/// Maximises `model`'s likelihood from `start`, with the smallest penalty that gives a finite
/// maximum. Returns the parameters and the penalty used.
pub fn fit(what: &str, model: &dyn Likelihood, start: &[f64]) -> Result<(Vec<f64>, f64)> {
    let mut last = None;
    for &c in PENALTIES {
        match maximise(what, model, start, c) {
            Ok(p) => return Ok((p, c)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// A function to minimise, with its gradient.
pub trait Cost: Sync {
    /// The value at `x` and, into `grad`, its gradient.
    fn cost_grad(&self, x: &[f64], grad: &mut [f64]) -> f64;
    /// Whether a best-so-far point shows the minimisation running off to infinity, so that
    /// going on is pointless.
    fn diverged(&self, _x: &[f64]) -> bool {
        false
    }
}

/// The best point an L-BFGS run saw.
#[derive(Debug, Clone)]
pub struct Minimum {
    pub x: Vec<f64>,
    pub cost: f64,
    pub grad_norm: f64,
}

/// `Cost` for argmin. The last value and gradient are kept because the line search asks for
/// both at the same point, and the best point seen is kept because a line search that cannot
/// improve any more ends the run with an error.
struct Problem<'a> {
    cost: &'a dyn Cost,
    last: Mutex<Option<Evaluated>>,
    best: &'a Mutex<Option<Minimum>>,
}

/// Point, value and gradient.
type Evaluated = (Vec<f64>, f64, Vec<f64>);

impl Problem<'_> {
    fn eval(&self, x: &[f64]) -> std::result::Result<(f64, Vec<f64>), argmin::core::Error> {
        if let Some((at, cost, grad)) = self.last.lock().expect("not poisoned").as_ref()
            && at == x
        {
            return Ok((*cost, grad.clone()));
        }
        let mut grad = vec![0.0; x.len()];
        let mut cost = self.cost.cost_grad(x, &mut grad);
        // Outside the region where the function is defined, a wall the line search backs
        // away from rather than a NaN that would derail it.
        if !cost.is_finite() || !grad.iter().all(|v| v.is_finite()) {
            cost = f64::MAX / 4.0;
            grad.iter_mut().for_each(|g| *g = 0.0);
        }
        let mut best = self.best.lock().expect("not poisoned");
        if best.as_ref().is_none_or(|b| cost < b.cost) {
            *best = Some(Minimum {
                x: x.to_vec(),
                cost,
                grad_norm: grad.iter().map(|g| g * g).sum::<f64>().sqrt(),
            });
            if self.cost.diverged(x) {
                return Err(argmin::core::Error::msg("diverged"));
            }
        }
        *self.last.lock().expect("not poisoned") = Some((x.to_vec(), cost, grad.clone()));
        Ok((cost, grad))
    }
}

impl CostFunction for Problem<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, p: &Vec<f64>) -> std::result::Result<f64, argmin::core::Error> {
        Ok(self.eval(p)?.0)
    }
}

impl Gradient for Problem<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, p: &Vec<f64>) -> std::result::Result<Vec<f64>, argmin::core::Error> {
        Ok(self.eval(p)?.1)
    }
}

/// Minimises `cost` from `x0` with L-BFGS until the gradient norm is below `tol_grad`, the
/// line search can improve no more, or `max_iters`; returns the best point seen (callers
/// judge it by its gradient norm).
pub fn minimise(
    what: &str,
    cost: &dyn Cost,
    x0: Vec<f64>,
    tol_grad: f64,
    max_iters: u64,
) -> Result<Minimum> {
    let fail = |e: argmin::core::Error| Error::Input(format!("{what}: the optimiser failed: {e}"));
    let best = Mutex::new(None);
    let problem = Problem {
        cost,
        last: Mutex::new(None),
        best: &best,
    };
    // The cost tolerance ends runs whose gradient cannot get below `tol_grad` for rounding
    // (sums over a million terms); callers judge the result by its gradient norm, so a
    // likelihood that merely flattens towards infinity is not mistaken for a maximum.
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 7)
        .with_tolerance_grad(tol_grad)
        .map_err(fail)?
        .with_tolerance_cost(1e-13)
        .map_err(fail)?;
    let run_error = Executor::new(problem, solver)
        .configure(|state| state.param(x0).max_iters(max_iters))
        .run()
        .err();
    let best = best.into_inner().expect("not poisoned");
    match best.filter(|b| b.cost < f64::MAX / 8.0) {
        Some(b) => Ok(b),
        None => Err(match run_error {
            Some(e) => fail(e),
            None => Error::Input(format!(
                "{what}: the function could not be minimised (no finite value found)"
            )),
        }),
    }
}

/// A likelihood as a cost over log-parameters: the negative mean log-likelihood plus the L2
/// penalty on the parameters.
struct LogParams<'a> {
    model: &'a dyn Likelihood,
    penalty: f64,
}

impl Cost for LogParams<'_> {
    fn cost_grad(&self, log_p: &[f64], grad: &mut [f64]) -> f64 {
        if log_p.iter().any(|v| v.abs() > WALL) {
            return f64::INFINITY;
        }
        let p: Vec<f64> = log_p.iter().map(|v| v.exp()).collect();
        let mut g = vec![0.0; p.len()];
        let n = self.model.observations().max(1) as f64;
        let ll = self.model.ll_grad(&p, &mut g) / n
            - self.penalty * p.iter().map(|v| v * v).sum::<f64>();
        // d/d(log p) = p · d/dp, and the cost is the negative.
        for k in 0..p.len() {
            grad[k] = -(p[k] * (g[k] / n - 2.0 * self.penalty * p[k]));
        }
        -ll
    }

    fn diverged(&self, log_p: &[f64]) -> bool {
        log_p.iter().any(|v| v.abs() > DIVERGED)
    }
}

fn maximise(what: &str, model: &dyn Likelihood, start: &[f64], penalty: f64) -> Result<Vec<f64>> {
    // At a maximum the gradient of the mean log-likelihood vanishes up to rounding; a point
    // where it is still this large is not one.
    const GRAD_OK: f64 = 1e-6;
    let x0: Vec<f64> = start.iter().map(|p| p.ln()).collect();
    let best = minimise(what, &LogParams { model, penalty }, x0, 1e-8, 500)?;
    // A parameter running off towards infinity means the likelihood has no finite maximum.
    if best.grad_norm > GRAD_OK || best.x.iter().any(|p| p.abs() > DIVERGED) {
        return Err(Error::Input(format!(
            "{what}: the optimiser did not converge (the likelihood has no finite maximum)"
        )));
    }
    Ok(best.x.iter().map(|p| p.exp()).collect())
}

/// Sums `f` over `items` in fixed chunks on the rayon pool; the chunk sums are added in order,
/// so the result does not depend on scheduling.
pub fn par_sum<T: Sync, const K: usize>(
    items: &[T],
    f: impl Fn(&[T], &mut [f64; K]) -> f64 + Sync,
) -> (f64, [f64; K]) {
    use rayon::prelude::*;
    const CHUNK: usize = 16_384;
    let parts: Vec<(f64, [f64; K])> = items
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut g = [0.0; K];
            let v = f(chunk, &mut g);
            (v, g)
        })
        .collect();
    let mut total = 0.0;
    let mut grad = [0.0; K];
    for (v, g) in parts {
        total += v;
        for k in 0..K {
            grad[k] += g[k];
        }
    }
    (total, grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-parameter log-likelihood given as a function and its derivative.
    struct OneParam(fn(f64) -> (f64, f64));

    impl Likelihood for OneParam {
        fn observations(&self) -> usize {
            1
        }
        fn ll_grad(&self, p: &[f64], grad: &mut [f64]) -> f64 {
            let (v, d) = (self.0)(p[0]);
            grad[0] = d;
            v
        }
    }

    #[test]
    fn a_finite_maximum_is_found_without_penalty() {
        let model = OneParam(|p| (-(p - 3.0).powi(2), -2.0 * (p - 3.0)));
        let (p, penalty) = fit("test", &model, &[1.0]).unwrap();
        assert!((p[0] - 3.0).abs() < 1e-4, "{p:?}");
        assert_eq!(penalty, 0.0);
    }

    #[test]
    fn a_likelihood_without_finite_maximum_is_an_error_that_says_so() {
        // Grows faster than the largest L2 penalty (0.1 p²) can hold back.
        let model = OneParam(|p| (p.powi(3), 3.0 * p * p));
        let err = fit("Gamma-Gamma", &model, &[1.0]).unwrap_err().to_string();
        assert!(
            err.contains("Gamma-Gamma") && err.contains("did not converge"),
            "{err}"
        );
    }
}
