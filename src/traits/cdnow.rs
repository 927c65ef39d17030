//! The CDNOW reference data of the buy-till-you-die literature: reads either raw file (the
//! 5-column sample, or the master with its header), summarises it for the calibration period
//! the papers use (to 1997-09-30, in weeks; same-day purchases are one transaction), and fits
//! BG/NBD and Gamma-Gamma, so that the published parameters can be checked.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDate;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::traits::btyd::{self, History};

/// The end of the calibration period of the literature (inclusive).
pub fn cutoff() -> NaiveDate {
    NaiveDate::from_ymd_opt(1997, 9, 30).expect("valid date")
}

/// Histories per customer and what went into them.
#[derive(Debug, Clone)]
pub struct Summary {
    pub histories: Vec<History>,
    pub counts: Counts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Purchase rows read.
    pub rows: u64,
    pub customers: u64,
    /// Customers with at least one repeat purchase in the calibration period.
    pub repeat_customers: u64,
    /// Transactions (customer-days) in the calibration period.
    pub calibration_transactions: u64,
    /// Transactions after the cutoff (the 39-week holdout).
    pub holdout_transactions: u64,
    /// Repeat customers left out of Gamma-Gamma because their average spend is not positive.
    pub non_positive_spend: u64,
}

/// Reads a raw CDNOW file and summarises it in weeks up to the cutoff.
pub fn summarise(path: &Path) -> Result<Summary> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut days: BTreeMap<String, BTreeMap<NaiveDate, f64>> = BTreeMap::new();
    let mut counts = Counts::default();
    let bad = |line: usize, msg: String| Error::Input(format!("{}:{line}: {msg}", path.display()));
    let mut layout: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        if layout.is_none() && cols[0] == "customer_id" {
            // The master's header.
            layout = Some(4);
            continue;
        }
        let width = *layout.get_or_insert(cols.len());
        if cols.len() != width || !(width == 4 || width == 5) {
            return Err(bad(
                n,
                format!(
                    "expected {} whitespace-separated columns (customer, date YYYYMMDD, CDs, dollars{}), found {}",
                    width.clamp(4, 5),
                    if width == 5 {
                        ", with the sample id second"
                    } else {
                        ""
                    },
                    cols.len()
                ),
            ));
        }
        let (customer, date, dollars) = if width == 5 {
            (cols[1], cols[2], cols[4])
        } else {
            (cols[0], cols[1], cols[3])
        };
        let date_col = if width == 5 { 3 } else { 2 };
        let date = NaiveDate::parse_from_str(date, "%Y%m%d").map_err(|_| {
            bad(
                n,
                format!("column {date_col} (date): {date:?} is not a YYYYMMDD date"),
            )
        })?;
        let dollars: f64 = dollars.parse().map_err(|_| {
            bad(
                n,
                format!("column {} (dollars): {dollars:?} is not a number", width),
            )
        })?;
        counts.rows += 1;
        *days
            .entry(customer.to_string())
            .or_default()
            .entry(date)
            .or_default() += dollars;
    }
    let cutoff = cutoff();
    let mut histories = Vec::new();
    for per_day in days.values() {
        let calibration: Vec<(&NaiveDate, &f64)> =
            per_day.iter().filter(|(d, _)| **d <= cutoff).collect();
        counts.holdout_transactions += (per_day.len() - calibration.len()) as u64;
        let Some((first, _)) = calibration.first() else {
            continue;
        };
        let (last, _) = calibration[calibration.len() - 1];
        let weeks = |a: &NaiveDate, b: &NaiveDate| (*b - *a).num_days() as f64 / 7.0;
        let x = (calibration.len() - 1) as f64;
        let repeat_spend: f64 = calibration[1..].iter().map(|(_, v)| **v).sum();
        let zbar = if x > 0.0 { repeat_spend / x } else { 0.0 };
        counts.customers += 1;
        counts.calibration_transactions += calibration.len() as u64;
        if x > 0.0 {
            counts.repeat_customers += 1;
            if zbar <= 0.0 {
                counts.non_positive_spend += 1;
            }
        }
        histories.push(History {
            x,
            t_x: weeks(first, last),
            t: weeks(first, &cutoff),
            zbar,
        });
    }
    if histories.is_empty() {
        return Err(Error::Input(format!(
            "{}: no purchases on or before {cutoff}",
            path.display()
        )));
    }
    Ok(Summary { histories, counts })
}

/// The fit `tribe traits fit-cdnow` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CdnowFit {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
    pub log_likelihood: f64,
    pub p: f64,
    pub q: f64,
    pub gamma: f64,
    pub counts: Counts,
}

/// Summarises and fits a raw CDNOW file.
pub fn fit(path: &Path) -> Result<CdnowFit> {
    let summary = summarise(path)?;
    let bg = btyd::fit_bgnbd(&summary.histories)?;
    let gg = btyd::fit_gamma_gamma(&summary.histories)?;
    Ok(CdnowFit {
        r: bg.r,
        alpha: bg.alpha,
        a: bg.a,
        b: bg.b,
        log_likelihood: bg.log_likelihood,
        p: gg.p,
        q: gg.q,
        gamma: gg.gamma,
        counts: summary.counts,
    })
}
