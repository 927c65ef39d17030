//! `tribe traits compute`: purchase histories per profile from `profile_events` as of a time,
//! RFM, the BG/NBD and Gamma-Gamma fits over all buyers, and per profile the probability of
//! being active, expected purchases over the horizon, expected spend and discounted lifetime
//! value, written to the `traits` table (replaced as a whole, in one commit).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Date32Type, Field, Float64Type, Int64Type, Schema};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::storage::schema::timestamp_type;
use crate::storage::{TableSpec, WriteMode};
use crate::traits::btyd::{self, BgNbd, GammaGamma, History};
use crate::traits::rfm;
use crate::workspace::Workspace;

/// What a computation did.
#[derive(Debug, Clone, Serialize)]
pub struct ComputeReport {
    pub as_of: String,
    pub unit: String,
    /// Profiles with at least one purchase (rows of `traits`).
    pub buyers: u64,
    pub repeat_buyers: u64,
    pub transactions: u64,
    /// Purchases left out because of another currency.
    pub other_currency: u64,
    pub bgnbd: Option<BgNbd>,
    pub gamma_gamma: Option<GammaGamma>,
    /// Traits not produced, and why.
    pub not_produced: Vec<String>,
    pub seconds: f64,
}

/// One buyer's transactions: (UTC day start, spend), in day order.
struct Buyer {
    profile_id: String,
    days: Vec<(i64, f64)>,
}

const DAY_US: i64 = 86_400_000_000;

/// Computes the traits of every buyer as of `as_of` and replaces the `traits` table.
pub async fn compute(ws: &Workspace, as_of: DateTime<Utc>) -> Result<ComputeReport> {
    let started = std::time::Instant::now();
    let cfg = &ws.config.traits;
    let (ctx, tables) = crate::sql::session(ws).await?;
    if !tables.iter().any(|t| t.name == "profile_keys") {
        return Err(Error::Input(
            "computed traits need profiles: run `tribe resolve` first".into(),
        ));
    }
    let revenue = format!("prop_{}", cfg.revenue_property);
    let events = ctx.table_provider("events").await?;
    if events.schema().field_with_name(&revenue).is_err() {
        return Err(Error::Input(format!(
            "[traits] revenue_property {:?}: events have no typed property of that name; declare it under [events.properties]",
            cfg.revenue_property
        )));
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let as_of_sql = format!(
        "CAST({} AS TIMESTAMP)",
        quote(&as_of.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
    );
    let base = format!(
        "profile_id IS NOT NULL AND event = {} AND \"timestamp\" <= {as_of_sql}",
        quote(&cfg.purchase_event)
    );
    let (currency_ok, other_currency) = match &cfg.currency {
        Some(c) => {
            let ok = format!("(prop_currency IS NULL OR prop_currency = {})", quote(c));
            let n = scalar(
                &ctx,
                &format!("SELECT count(*) FROM profile_events WHERE {base} AND NOT {ok}"),
            )
            .await?;
            (ok, n)
        }
        None => ("TRUE".to_string(), 0),
    };
    let sql = format!(
        "SELECT profile_id, \"day\", \
         coalesce(sum(\"{revenue}\"), 0) AS spend \
         FROM profile_events WHERE {base} AND {currency_ok} GROUP BY 1, 2 ORDER BY 1, 2"
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut buyers: Vec<Buyer> = Vec::new();
    for b in &batches {
        let ids = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let days = arrow::compute::cast(b.column(1), &DataType::Date32)?;
        let days = days.as_primitive::<Date32Type>();
        let spend = arrow::compute::cast(b.column(2), &DataType::Float64)?;
        let spend = spend.as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            // `day` is the UTC day of the event (days since 1970-01-01).
            let day = i64::from(days.value(i)) * DAY_US;
            let id = ids.value(i);
            match buyers.last_mut() {
                Some(last) if last.profile_id == id => last.days.push((day, spend.value(i))),
                _ => buyers.push(Buyer {
                    profile_id: id.to_string(),
                    days: vec![(day, spend.value(i))],
                }),
            }
        }
    }
    let unit_days = if cfg.unit == "weeks" { 7.0 } else { 1.0 };
    let now_us = as_of.timestamp_micros();
    let histories: Vec<History> = buyers
        .iter()
        .map(|b| history(&b.days, now_us, unit_days))
        .collect();
    let mut not_produced = Vec::new();
    let bgnbd = match btyd::fit_bgnbd(&histories) {
        Ok(m) => Some(m),
        Err(e) => {
            not_produced.push(format!("p_alive, expected_purchases, clv: {e}"));
            None
        }
    };
    let gamma_gamma = match btyd::fit_gamma_gamma(&histories) {
        Ok(m) if m.q > 1.0 => Some(m),
        Ok(m) => {
            not_produced.push(format!(
                "expected_spend, clv: Gamma-Gamma fitted q = {:.3} <= 1, for which the expected spend is undefined",
                m.q
            ));
            None
        }
        Err(e) => {
            not_produced.push(format!("expected_spend, clv: {e}"));
            None
        }
    };
    let batch = traits_batch(
        &buyers,
        &histories,
        as_of,
        unit_days,
        bgnbd.as_ref(),
        gamma_gamma.as_ref(),
        cfg,
    )?;
    ws.storage
        .write(&traits_spec(), vec![batch], WriteMode::Replace)
        .await?;
    Ok(ComputeReport {
        as_of: as_of.to_rfc3339(),
        unit: cfg.unit.clone(),
        buyers: buyers.len() as u64,
        repeat_buyers: histories.iter().filter(|h| h.x > 0.0).count() as u64,
        transactions: buyers.iter().map(|b| b.days.len() as u64).sum(),
        other_currency,
        bgnbd,
        gamma_gamma,
        not_produced,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A buyer's history in model units: repeat transactions, the last one's time after the first,
/// the time observed since the first, and the mean spend of the repeat transactions.
fn history(days: &[(i64, f64)], now_us: i64, unit_days: f64) -> History {
    let first = days[0].0;
    let last = days[days.len() - 1].0;
    let units = |us: i64| us as f64 / DAY_US as f64 / unit_days;
    let x = (days.len() - 1) as f64;
    let zbar = if x > 0.0 {
        days[1..].iter().map(|(_, s)| s).sum::<f64>() / x
    } else {
        0.0
    };
    History {
        x,
        t_x: units(last - first),
        t: units(now_us - first),
        zbar,
    }
}

/// The `traits` table's shape.
pub fn traits_spec() -> TableSpec {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    TableSpec {
        name: "traits".into(),
        path: "traits".into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("as_of", timestamp_type(), false),
            Field::new("computed_at", timestamp_type(), false),
            f("recency_days", DataType::Int64),
            f("frequency", DataType::Int64),
            f("monetary", DataType::Float64),
            f("rfm_recency", DataType::Int64),
            f("rfm_frequency", DataType::Int64),
            f("rfm_monetary", DataType::Int64),
            f("rfm_score", DataType::Utf8),
            f("rfm_segment", DataType::Utf8),
            f("repeat_purchases", DataType::Int64),
            f("p_alive", DataType::Float64),
            f("expected_purchases", DataType::Float64),
            f("expected_spend", DataType::Float64),
            f("clv", DataType::Float64),
        ])),
        partition_columns: vec![],
    }
}

fn traits_batch(
    buyers: &[Buyer],
    histories: &[History],
    as_of: DateTime<Utc>,
    unit_days: f64,
    bg: Option<&BgNbd>,
    gg: Option<&GammaGamma>,
    cfg: &crate::config::TraitsSection,
) -> Result<RecordBatch> {
    let n = buyers.len();
    let now_us = as_of.timestamp_micros();
    let recency: Vec<f64> = buyers
        .iter()
        .map(|b| ((now_us - b.days[b.days.len() - 1].0) / DAY_US) as f64)
        .collect();
    let frequency: Vec<f64> = buyers.iter().map(|b| b.days.len() as f64).collect();
    let monetary: Vec<f64> = buyers
        .iter()
        .map(|b| b.days.iter().map(|(_, s)| s).sum())
        .collect();
    let (r_s, f_s, m_s) = (
        rfm::quintiles(&recency, false),
        rfm::quintiles(&frequency, true),
        rfm::quintiles(&monetary, true),
    );
    let mut ids = StringBuilder::new();
    let (mut rec, mut freq, mut rr, mut ff, mut mm, mut rep) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    let mut mon = Float64Builder::new();
    let (mut score, mut segment) = (StringBuilder::new(), StringBuilder::new());
    let (mut alive, mut expected, mut spend, mut clv) = (
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
    );
    // Never a NaN or infinity in the table: a value the model cannot give is null.
    let finite = |v: f64| v.is_finite().then_some(v);
    let horizon = cfg.horizon_days as f64 / unit_days;
    let month = 30.0 / unit_days;
    for i in 0..n {
        let h = &histories[i];
        ids.append_value(&buyers[i].profile_id);
        rec.append_value(recency[i] as i64);
        freq.append_value(frequency[i] as i64);
        mon.append_value(monetary[i]);
        rr.append_value(i64::from(r_s[i]));
        ff.append_value(i64::from(f_s[i]));
        mm.append_value(i64::from(m_s[i]));
        score.append_value(format!("{}{}{}", r_s[i], f_s[i], m_s[i]));
        segment.append_value(rfm::group(r_s[i], f_s[i]));
        rep.append_value(h.x as i64);
        alive.append_option(bg.and_then(|m| finite(m.p_alive(h))));
        expected.append_option(bg.and_then(|m| finite(m.expected_purchases(horizon, h))));
        let s = gg.and_then(|m| finite(m.expected_spend(h)));
        spend.append_option(s);
        let value = match (bg, s) {
            (Some(m), Some(s)) => {
                let mut total = 0.0;
                let mut before = 0.0;
                for k in 1..=cfg.clv_months {
                    let upto = m.expected_purchases(month * k as f64, h);
                    total += s * (upto - before) / (1.0 + cfg.monthly_discount_rate).powi(k as i32);
                    before = upto;
                }
                finite(total)
            }
            _ => None,
        };
        clv.append_option(value);
    }
    let computed = Utc::now().timestamp_micros();
    let spec = traits_spec();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(TimestampMicrosecondArray::from(vec![now_us; n]).with_timezone("UTC")),
        Arc::new(TimestampMicrosecondArray::from(vec![computed; n]).with_timezone("UTC")),
        Arc::new(rec.finish()),
        Arc::new(freq.finish()),
        Arc::new(mon.finish()),
        Arc::new(rr.finish()),
        Arc::new(ff.finish()),
        Arc::new(mm.finish()),
        Arc::new(score.finish()),
        Arc::new(segment.finish()),
        Arc::new(rep.finish()),
        Arc::new(alive.finish()),
        Arc::new(expected.finish()),
        Arc::new(spend.finish()),
        Arc::new(clv.finish()),
    ];
    Ok(RecordBatch::try_new(spec.schema, columns)?)
}

async fn scalar(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<u64> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches
        .first()
        .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>())
        .map_or(0, |a| a.value(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_follow_the_literature() {
        let d = |day: i64| day * DAY_US;
        // Three purchases on days 0, 10, 30 (spend 5, 10, 20), observed until day 40.
        let h = history(&[(d(0), 5.0), (d(10), 10.0), (d(30), 20.0)], d(40), 1.0);
        assert_eq!(
            h,
            History {
                x: 2.0,
                t_x: 30.0,
                t: 40.0,
                zbar: 15.0
            }
        );
        let w = history(&[(d(0), 5.0)], d(14), 7.0);
        assert_eq!(
            w,
            History {
                x: 0.0,
                t_x: 0.0,
                t: 2.0,
                zbar: 0.0
            }
        );
    }
}
