//! Special functions the models need that `libm` does not have: the digamma function (for the
//! likelihood gradients) and Gauss's hypergeometric function (for expected purchases).

/// The digamma function ψ(x) = d/dx ln Γ(x), for x > 0: the recurrence ψ(x) = ψ(x + 1) - 1/x
/// up to x ≥ 10, then the asymptotic series to x^-10 (error below 1e-13 there).
pub fn digamma(mut x: f64) -> f64 {
    let mut shift = 0.0;
    while x < 10.0 {
        shift -= 1.0 / x;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series = inv2
        * (1.0 / 12.0
            - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 / 132.0))));
    shift + x.ln() - 0.5 * inv - series
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
    fn digamma_matches_known_values() {
        const EULER: f64 = 0.577_215_664_901_532_9;
        assert!((digamma(1.0) + EULER).abs() < 1e-12);
        assert!((digamma(0.5) + EULER + 2.0 * 2f64.ln()).abs() < 1e-12);
        // ψ(n + 1) = H_n - γ
        let h10: f64 = (1..=10).map(|k| 1.0 / k as f64).sum();
        assert!((digamma(11.0) - (h10 - EULER)).abs() < 1e-12);
        // The derivative of ln Γ, numerically, at a point far from the known ones.
        let x = 0.0137;
        let d = (libm::lgamma(x + 1e-6) - libm::lgamma(x - 1e-6)) / 2e-6;
        assert!(
            (digamma(x) - d).abs() < 1e-4 * d.abs(),
            "{} {d}",
            digamma(x)
        );
    }

    #[test]
    fn hypergeometric_matches_closed_forms() {
        // 2F1(1, 1; 2; z) = -ln(1 - z) / z
        let z: f64 = 0.5;
        assert!((hyp2f1(1.0, 1.0, 2.0, z) - (-(1.0 - z).ln() / z)).abs() < 1e-12);
        // 2F1(a, b; b; z) = (1 - z)^-a
        assert!((hyp2f1(2.5, 3.0, 3.0, 0.3) - 0.7f64.powf(-2.5)).abs() < 1e-12);
    }
}
