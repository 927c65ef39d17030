//! `tribe traits compute`: purchase histories per profile from `profile_events` as of a time,
//! RFM, the BG/NBD and Gamma-Gamma fits over all buyers, and per profile the probability of
//! being active, expected purchases over the horizon, expected spend and discounted lifetime
//! value, written to the `traits` table (replaced as a whole, in one commit).

use std::collections::HashMap;
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3Builder;

use arrow::array::{
    ArrayRef, AsArray, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Date32Type, Field, Float64Type, Int64Type, Schema};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::sql::{lit, ts};
use crate::storage::schema::timestamp_type;
use crate::storage::{TableSpec, WriteMode};
use crate::traits::btyd::{self, BgNbd, GammaGamma, History};
use crate::traits::features::{self, Purchases};
use crate::traits::propensity::{self, Trained};
use crate::traits::rfm;
use crate::workspace::Workspace;

/// What a computation did.
#[derive(Debug, Clone, Serialize)]
pub struct ComputeReport {
    pub as_of: String,
    pub unit: String,
    /// Profiles first seen by the as-of time (rows of `traits`).
    pub profiles: u64,
    /// Profiles with at least one purchase.
    pub buyers: u64,
    pub repeat_buyers: u64,
    /// Repeat buyers whose average repeat spend is not positive: left out of Gamma-Gamma.
    pub non_positive_spend: u64,
    pub transactions: u64,
    /// Purchases left out because of another currency.
    pub other_currency: u64,
    pub bgnbd: Option<BgNbd>,
    pub gamma_gamma: Option<GammaGamma>,
    /// Propensity models trained, with their held-out AUC.
    pub models: Vec<ModelSummary>,
    /// Traits not produced, and why.
    pub not_produced: Vec<String>,
    pub seconds: f64,
    /// Seconds per phase: reading purchases, fitting BG/NBD and Gamma-Gamma, building features,
    /// training and scoring propensity models, writing the tables.
    pub phases: Vec<(String, f64)>,
}

/// A propensity model's headline numbers; `tribe traits report` shows the rest.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub training_rows: u64,
    pub holdout_rows: u64,
    pub auc: f64,
    pub log_loss: f64,
}

/// Columns of `traits` that are not propensity models (model names must differ).
pub fn built_in_columns() -> Vec<String> {
    traits_spec(&[])
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
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
    let mut phases: Vec<(String, f64)> = Vec::new();
    let mut lap = std::time::Instant::now();
    let mut phase = |name: &str| {
        phases.push((name.to_string(), round3(lap.elapsed().as_secs_f64())));
        lap = std::time::Instant::now();
    };
    let cfg = &ws.config.traits;
    let (ctx, tables) = crate::sql::session(ws).await?;
    if !tables.iter().any(|t| t.name == "profile_routes") {
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
    // Purchases in another currency are counted in the same pass, not read again.
    let currency_ok = match &cfg.currency {
        Some(c) => format!("(prop_currency IS NULL OR prop_currency = {})", lit(c)),
        None => "TRUE".to_string(),
    };
    // Grouped by profile here rather than sorted by the engine: a hash map is cheaper than a
    // sort of every purchase day by profile id.
    let sql = format!(
        "SELECT profile_id, \"day\", \
         coalesce(sum(\"{revenue}\") FILTER (WHERE {currency_ok}), 0) AS spend, \
         count(*) FILTER (WHERE {currency_ok}) AS kept, \
         count(*) FILTER (WHERE NOT {currency_ok}) AS other \
         FROM profile_events WHERE profile_id IS NOT NULL AND event = {} \
         AND \"timestamp\" <= {} GROUP BY 1, 2",
        lit(&cfg.purchase_event),
        ts(as_of)
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut other_currency = 0;
    let mut by_profile: HashMap<String, Vec<(i64, f64)>, Xxh3Builder> =
        HashMap::with_hasher(Xxh3Builder::new());
    for b in &batches {
        let ids = arrow::compute::cast(b.column(0), &DataType::Utf8View)?;
        let ids = ids.as_string_view();
        let days = arrow::compute::cast(b.column(1), &DataType::Date32)?;
        let days = days.as_primitive::<Date32Type>();
        let spend = arrow::compute::cast(b.column(2), &DataType::Float64)?;
        let spend = spend.as_primitive::<Float64Type>();
        let kept = b.column(3).as_primitive::<Int64Type>();
        let other = b.column(4).as_primitive::<Int64Type>();
        other_currency += other.iter().flatten().sum::<i64>() as u64;
        for i in 0..b.num_rows() {
            if kept.value(i) == 0 {
                continue;
            }
            // `day` is the UTC day of the event (days since 1970-01-01).
            let day = (i64::from(days.value(i)) * DAY_US, spend.value(i));
            match by_profile.get_mut(ids.value(i)) {
                Some(days) => days.push(day),
                None => {
                    by_profile.insert(ids.value(i).to_string(), vec![day]);
                }
            }
        }
    }
    let mut buyers: Vec<Buyer> = by_profile
        .into_iter()
        .map(|(profile_id, mut days)| {
            days.sort_by_key(|d| d.0);
            Buyer { profile_id, days }
        })
        .collect();
    buyers.sort_by(|a, b| a.profile_id.cmp(&b.profile_id));
    let unit_days = if cfg.unit == "weeks" { 7.0 } else { 1.0 };
    let now_us = as_of.timestamp_micros();
    let histories: Vec<History> = buyers
        .iter()
        .map(|b| history(&b.days, now_us, unit_days))
        .collect();
    let mut not_produced = Vec::new();
    phase("purchases");
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
    phase("fits");
    let horizon = cfg.horizon_days as f64 / unit_days;
    let purchases_at = |at: DateTime<Utc>| purchases(&buyers, at, unit_days, horizon, None);
    let mut trained = Vec::new();
    let mut scores: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    let population = if cfg.models.is_empty() {
        population(&ctx, as_of).await?
    } else {
        let longest = cfg
            .models
            .values()
            .map(|m| m.horizon_days)
            .max()
            .unwrap_or(0);
        let plan = features::plan(&ctx, as_of - chrono::Duration::days(i64::from(longest))).await?;
        // Time 0 is the as-of time (scoring); then each model's cutoff (training).
        let mut times = vec![as_of];
        let mut purchase_maps = vec![purchases(
            &buyers,
            as_of,
            unit_days,
            horizon,
            bgnbd.as_ref(),
        )];
        let mut labels = Vec::new();
        for spec in cfg.models.values() {
            let cutoff = as_of - chrono::Duration::days(i64::from(spec.horizon_days));
            let event = spec.event.as_deref().unwrap_or(&cfg.purchase_event);
            times.push(cutoff);
            purchase_maps.push(purchases_at(cutoff));
            labels.push(features::LabelSpec {
                event: event.to_string(),
                from: cutoff,
            });
        }
        let (mut tables, happened) =
            features::tables(&ctx, &plan, &times, &purchase_maps, &labels).await?;
        let scoring = tables.remove(0);
        phase("features");
        for (k, (name, spec)) in cfg.models.iter().enumerate() {
            let result = propensity::train(
                name,
                spec,
                &cfg.purchase_event,
                times[k + 1],
                &tables[k],
                &happened[k],
                &scoring,
            );
            match result {
                Ok((t, s)) => {
                    scores.push((name.clone(), s.into_iter().map(Some).collect()));
                    trained.push(t);
                }
                Err(e) => {
                    not_produced.push(format!("{name}: {e}"));
                    scores.push((name.clone(), vec![None; scoring.ids.len()]));
                }
            }
        }
        phase("models");
        scoring.ids
    };
    let batch = traits_batch(
        &population,
        &scores,
        &buyers,
        &histories,
        as_of,
        unit_days,
        bgnbd.as_ref(),
        gamma_gamma.as_ref(),
        cfg,
    )?;
    let rows = batch.num_rows() as u64;
    let models = models_batch(as_of, bgnbd.as_ref(), gamma_gamma.as_ref(), &trained)?;
    // The models first: a reader that sees new traits finds the models that made them.
    ws.storage
        .write(&models_spec(), vec![models], WriteMode::Replace)
        .await?;
    ws.storage
        .write(
            &traits_spec(&cfg.models.keys().cloned().collect::<Vec<_>>()),
            vec![batch],
            WriteMode::Replace,
        )
        .await?;
    phase("write");
    Ok(ComputeReport {
        as_of: as_of.to_rfc3339(),
        unit: cfg.unit.clone(),
        profiles: rows,
        buyers: buyers.len() as u64,
        repeat_buyers: histories.iter().filter(|h| h.x > 0.0).count() as u64,
        non_positive_spend: histories
            .iter()
            .filter(|h| h.x > 0.0 && h.zbar <= 0.0)
            .count() as u64,
        transactions: buyers.iter().map(|b| b.days.len() as u64).sum(),
        other_currency,
        bgnbd,
        gamma_gamma,
        models: trained
            .iter()
            .map(|t| ModelSummary {
                name: t.name.clone(),
                training_rows: t.training_rows,
                holdout_rows: t.holdout.rows,
                auc: t.holdout.auc,
                log_loss: t.holdout.log_loss,
            })
            .collect(),
        not_produced,
        seconds: started.elapsed().as_secs_f64(),
        phases,
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Profiles first seen by `at`, in id order.
async fn population(
    ctx: &datafusion::prelude::SessionContext,
    at: DateTime<Utc>,
) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT profile_id FROM profiles WHERE first_seen <= {} ORDER BY 1",
        ts(at)
    );
    let mut ids = Vec::new();
    for b in ctx.sql(&sql).await?.collect().await? {
        let col = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        ids.extend(col.as_string::<i32>().iter().flatten().map(String::from));
    }
    Ok(ids)
}

/// Each buyer's purchase summary as of `at` (purchases after it ignored), with BG/NBD
/// outputs from `model`, or from a model fitted to the histories as of `at`.
fn purchases(
    buyers: &[Buyer],
    at: DateTime<Utc>,
    unit_days: f64,
    horizon: f64,
    model: Option<&BgNbd>,
) -> HashMap<String, Purchases> {
    let at_us = at.timestamp_micros();
    let known: Vec<(&Buyer, usize)> = buyers
        .iter()
        .map(|b| (b, b.days.partition_point(|(d, _)| *d <= at_us)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let histories: Vec<History> = known
        .iter()
        .map(|(b, n)| history(&b.days[..*n], at_us, unit_days))
        .collect();
    let fitted = match model {
        Some(m) => Some(*m),
        None => btyd::fit_bgnbd(&histories).ok(),
    };
    known
        .iter()
        .zip(&histories)
        .map(|((b, n), h)| {
            let days = &b.days[..*n];
            let finite = |v: f64| v.is_finite().then_some(v);
            let p = Purchases {
                transactions: *n as f64,
                monetary: days.iter().map(|(_, s)| s).sum(),
                recency_days: ((at_us - days[n - 1].0) / DAY_US) as f64,
                p_alive: fitted.and_then(|m| finite(m.p_alive(h))),
                expected: fitted.and_then(|m| finite(m.expected_purchases(horizon, h))),
            };
            (b.profile_id.clone(), p)
        })
        .collect()
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

/// The `traits` table's shape: the built-in traits, then one column per propensity model.
pub fn traits_spec(models: &[String]) -> TableSpec {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    let mut fields = vec![
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
    ];
    fields.extend(models.iter().map(|m| f(m, DataType::Float64)));
    TableSpec {
        name: "traits".into(),
        path: "traits".into(),
        schema: Arc::new(Schema::new(fields)),
        partition_columns: vec![],
    }
}

/// The `trait_models` table: each fitted model of the last computation, its parameters and
/// metrics as JSON.
pub fn models_spec() -> TableSpec {
    TableSpec {
        name: "trait_models".into(),
        path: "trait_models".into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("model", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("as_of", timestamp_type(), false),
            Field::new("computed_at", timestamp_type(), false),
            Field::new("parameters", DataType::Utf8, false),
            Field::new("metrics", DataType::Utf8, false),
        ])),
        partition_columns: vec![],
    }
}

/// Model name, kind, parameters and metrics (JSON).
type ModelRow<'a> = (String, &'a str, String, String);

fn models_batch(
    as_of: DateTime<Utc>,
    bg: Option<&BgNbd>,
    gg: Option<&GammaGamma>,
    trained: &[Trained],
) -> Result<RecordBatch> {
    let json = |v: serde_json::Value| v.to_string();
    let mut rows: Vec<ModelRow> = Vec::new();
    if let Some(m) = bg {
        rows.push((
            "bgnbd".into(),
            "bgnbd",
            json(serde_json::json!({"r": m.r, "alpha": m.alpha, "a": m.a, "b": m.b, "penalizer": m.penalizer})),
            json(serde_json::json!({"log_likelihood": m.log_likelihood})),
        ));
    }
    if let Some(m) = gg {
        rows.push((
            "gamma_gamma".into(),
            "gamma_gamma",
            json(
                serde_json::json!({"p": m.p, "q": m.q, "gamma": m.gamma, "penalizer": m.penalizer}),
            ),
            json(serde_json::json!({"log_likelihood": m.log_likelihood})),
        ));
    }
    for t in trained {
        let parameters = serde_json::json!({
            "event": t.event, "predict": t.predict, "horizon_days": t.horizon_days,
            "cutoff": t.cutoff, "model": t.model,
        });
        let metrics = serde_json::json!({
            "training_rows": t.training_rows,
            "training_positive_rate": t.training_positive_rate,
            "holdout": t.holdout,
        });
        rows.push((
            t.name.clone(),
            "logistic_regression",
            json(parameters),
            json(metrics),
        ));
    }
    let n = rows.len();
    let text = |f: fn(&ModelRow) -> String| -> ArrayRef {
        Arc::new(arrow::array::StringArray::from(
            rows.iter().map(f).collect::<Vec<_>>(),
        ))
    };
    let computed = Utc::now().timestamp_micros();
    let columns: Vec<ArrayRef> = vec![
        text(|r| r.0.clone()),
        text(|r| r.1.to_string()),
        Arc::new(
            TimestampMicrosecondArray::from(vec![as_of.timestamp_micros(); n]).with_timezone("UTC"),
        ),
        Arc::new(TimestampMicrosecondArray::from(vec![computed; n]).with_timezone("UTC")),
        text(|r| r.2.clone()),
        text(|r| r.3.clone()),
    ];
    Ok(RecordBatch::try_new(models_spec().schema, columns)?)
}

/// One row per profile of `population` (and any buyer missing from it); the purchase traits
/// are null for profiles without purchases.
#[allow(clippy::too_many_arguments)]
fn traits_batch(
    population: &[String],
    scores: &[(String, Vec<Option<f64>>)],
    buyers: &[Buyer],
    histories: &[History],
    as_of: DateTime<Utc>,
    unit_days: f64,
    bg: Option<&BgNbd>,
    gg: Option<&GammaGamma>,
    cfg: &crate::config::TraitsSection,
) -> Result<RecordBatch> {
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
    let buyer_of: HashMap<&str, usize> = buyers
        .iter()
        .enumerate()
        .map(|(i, b)| (b.profile_id.as_str(), i))
        .collect();
    let in_population: std::collections::HashSet<&str> =
        population.iter().map(String::as_str).collect();
    // (profile id, its row in the model scores, its buyer index)
    let mut rows: Vec<(&str, Option<usize>, Option<usize>)> = population
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), Some(i), buyer_of.get(id.as_str()).copied()))
        .collect();
    rows.extend(
        buyers
            .iter()
            .enumerate()
            .filter(|(_, b)| !in_population.contains(b.profile_id.as_str()))
            .map(|(i, b)| (b.profile_id.as_str(), None, Some(i))),
    );
    let n = rows.len();
    let mut ids = StringBuilder::new();
    let int = || Int64Builder::with_capacity(n);
    let (mut rec, mut freq, mut rr, mut ff, mut mm, mut rep) =
        (int(), int(), int(), int(), int(), int());
    let float = || Float64Builder::with_capacity(n);
    let mut mon = float();
    let (mut score, mut segment) = (StringBuilder::new(), StringBuilder::new());
    let (mut alive, mut expected, mut spend, mut clv) = (float(), float(), float(), float());
    let mut model_columns: Vec<Float64Builder> = scores.iter().map(|_| float()).collect();
    // Never a NaN or infinity in the table: a value the model cannot give is null.
    let finite = |v: f64| v.is_finite().then_some(v);
    let horizon = cfg.horizon_days as f64 / unit_days;
    let month = 30.0 / unit_days;
    for (id, scored, buyer) in rows {
        ids.append_value(id);
        for (column, (_, values)) in model_columns.iter_mut().zip(scores) {
            column.append_option(scored.and_then(|i| values[i]).and_then(finite));
        }
        let Some(i) = buyer else {
            for b in [&mut rec, &mut freq, &mut rr, &mut ff, &mut mm, &mut rep] {
                b.append_null();
            }
            for b in [&mut mon, &mut alive, &mut expected, &mut spend, &mut clv] {
                b.append_null();
            }
            score.append_null();
            segment.append_null();
            continue;
        };
        let h = &histories[i];
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
    let spec = traits_spec(&scores.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
    let mut columns: Vec<ArrayRef> = vec![
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
    columns.extend(
        model_columns
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef),
    );
    Ok(RecordBatch::try_new(spec.schema, columns)?)
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
