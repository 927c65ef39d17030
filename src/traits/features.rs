//! Features for propensity models, per profile as of a time: activity over several windows,
//! per event type counts and recency, tenure, purchase history (RFM and BG/NBD outputs) and
//! the profile's own numeric, boolean and categorical traits. The same definitions serve for
//! training (as of a cutoff) and scoring (as of the as-of time), so a model always sees
//! features built the same way.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;

use crate::error::Result;

const DAY_US: i64 = 86_400_000_000;
/// Event types with their own features: the most frequent ones.
const TOP_EVENTS: usize = 12;
/// Categorical traits with more distinct values than this (names, ids) are not features.
const MAX_CATEGORIES: usize = 20;
/// Values of a categorical trait that get their own indicator; the rest share "other".
const TOP_CATEGORIES: usize = 10;
/// Activity windows, in days; event features look back over the longest.
const WINDOWS: [i64; 4] = [7, 30, 90, 365];

/// Columns of `profiles` that describe identity resolution rather than the person, or that
/// are counted up to now and would leak the future into a model trained on the past.
const SYSTEM_COLUMNS: &[&str] = &[
    "profile_id",
    "is_known",
    "user_id",
    "email",
    "phone",
    "identifiers",
    "first_seen",
    "last_seen",
    "events",
    "sources",
    "traits",
];

/// What the feature columns are, decided once per computation from the data.
#[derive(Debug, Clone)]
pub struct Plan {
    pub events: Vec<String>,
    pub numeric: Vec<String>,
    pub booleans: Vec<String>,
    pub categorical: Vec<(String, Vec<String>)>,
}

/// Feature rows for the profiles that existed at a time (first seen by then).
pub struct Table {
    pub names: Vec<String>,
    pub ids: Vec<String>,
    /// Row-major, `names.len()` per profile.
    pub values: Vec<f64>,
}

/// Per profile purchase summary as of a time, supplied by the caller (from the purchase
/// histories): frequency in transactions, monetary total, days since the last purchase,
/// BG/NBD probability alive and expected purchases (None when the model was not fitted).
#[derive(Debug, Clone, Copy)]
pub struct Purchases {
    pub transactions: f64,
    pub monetary: f64,
    pub recency_days: f64,
    pub p_alive: Option<f64>,
    pub expected: Option<f64>,
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn ts(at: DateTime<Utc>) -> String {
    format!(
        "CAST({} AS TIMESTAMP)",
        lit(&at.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
    )
}

fn date(at: DateTime<Utc>) -> String {
    format!("CAST({} AS DATE)", lit(&at.format("%Y-%m-%d").to_string()))
}

/// The event-time window `(at - days, at]`, with the day partitions it touches.
fn window(at: DateTime<Utc>, days: i64) -> String {
    let from = at - chrono::Duration::days(days);
    format!(
        "\"timestamp\" > {} AND \"timestamp\" <= {} AND \"day\" >= {} AND \"day\" <= {}",
        ts(from),
        ts(at),
        date(from),
        date(at)
    )
}

/// Decides the feature columns from the data before `at` (the training cutoff).
pub async fn plan(ctx: &SessionContext, at: DateTime<Utc>) -> Result<Plan> {
    let sql = format!(
        "SELECT coalesce(event, \"type\") AS ev, count(*) AS n FROM profile_events \
         WHERE profile_id IS NOT NULL AND {} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {TOP_EVENTS}",
        window(at, WINDOWS[3])
    );
    let mut events = Vec::new();
    for b in ctx.sql(&sql).await?.collect().await? {
        let names = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        events.extend(names.as_string::<i32>().iter().flatten().map(String::from));
    }
    let schema = ctx.table_provider("profiles").await?.schema();
    let (mut numeric, mut booleans, mut strings) = (Vec::new(), Vec::new(), Vec::new());
    for f in schema.fields() {
        if SYSTEM_COLUMNS.contains(&f.name().as_str()) {
            continue;
        }
        match f.data_type() {
            t if t.is_numeric() => numeric.push(f.name().clone()),
            DataType::Boolean => booleans.push(f.name().clone()),
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                strings.push(f.name().clone())
            }
            _ => {}
        }
    }
    let mut categorical = Vec::new();
    for col in strings {
        let sql = format!(
            "SELECT {c} AS v, count(*) AS n FROM profiles WHERE {c} IS NOT NULL \
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {}",
            MAX_CATEGORIES + 1,
            c = ident(&col)
        );
        let mut values = Vec::new();
        for b in ctx.sql(&sql).await?.collect().await? {
            let v = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            values.extend(v.as_string::<i32>().iter().flatten().map(String::from));
        }
        if !values.is_empty() && values.len() <= MAX_CATEGORIES {
            values.truncate(TOP_CATEGORIES);
            categorical.push((col, values));
        }
    }
    Ok(Plan {
        events,
        numeric,
        booleans,
        categorical,
    })
}

impl Plan {
    fn names(&self) -> Vec<String> {
        let mut names = vec![
            "tenure_days (log)".to_string(),
            "last_event (recency)".to_string(),
        ];
        names.extend(WINDOWS.iter().map(|w| format!("events_{w}d (log)")));
        for e in &self.events {
            names.push(format!("{e}: 30d (log)"));
            names.push(format!("{e}: 90d (log)"));
            names.push(format!("{e}: last (recency)"));
        }
        names.extend(
            [
                "buyer",
                "transactions (log)",
                "monetary (log)",
                "last_purchase (recency)",
                "p_alive",
                "expected_purchases (log)",
            ]
            .map(String::from),
        );
        for c in self.numeric.iter().chain(&self.booleans) {
            names.push(c.clone());
            names.push(format!("{c} missing"));
        }
        for (c, values) in &self.categorical {
            names.extend(values.iter().map(|v| format!("{c} = {v}")));
            names.push(format!("{c} other"));
        }
        names
    }
}

/// Recency as a bounded score: 1 for today, 0.5 a month ago, 0 for never.
fn recency(days: Option<f64>) -> f64 {
    days.map_or(0.0, |d| 1.0 / (1.0 + d.max(0.0) / 30.0))
}

/// The features of every profile first seen by `at`. `purchases` gives each buyer's purchase
/// summary as of `at`.
pub async fn table(
    ctx: &SessionContext,
    plan: &Plan,
    at: DateTime<Utc>,
    purchases: &HashMap<String, Purchases>,
) -> Result<Table> {
    let mut aggs = vec!["max(\"timestamp\")".to_string()];
    let window_filter = |days: i64| {
        let from = at - chrono::Duration::days(days);
        format!("\"timestamp\" > {}", ts(from))
    };
    for w in WINDOWS {
        aggs.push(format!("count(*) FILTER (WHERE {})", window_filter(w)));
    }
    for e in &plan.events {
        let is = format!("coalesce(event, \"type\") = {}", lit(e));
        aggs.push(format!(
            "count(*) FILTER (WHERE {is} AND {})",
            window_filter(30)
        ));
        aggs.push(format!(
            "count(*) FILTER (WHERE {is} AND {})",
            window_filter(90)
        ));
        aggs.push(format!("max(\"timestamp\") FILTER (WHERE {is})"));
    }
    let agg_names: Vec<String> = (0..aggs.len()).map(|i| format!("a{i}")).collect();
    let aggs: Vec<String> = aggs
        .iter()
        .zip(&agg_names)
        .map(|(a, n)| format!("{a} AS {n}"))
        .collect();
    let traits: Vec<String> = plan
        .numeric
        .iter()
        .map(|c| format!("CAST(p.{} AS DOUBLE)", ident(c)))
        .chain(plan.booleans.iter().map(|c| format!("p.{}", ident(c))))
        .chain(
            plan.categorical
                .iter()
                .map(|(c, _)| format!("CAST(p.{} AS VARCHAR)", ident(c))),
        )
        .collect();
    let mut select = vec!["p.profile_id".to_string(), "p.first_seen".to_string()];
    select.extend(agg_names.iter().map(|n| format!("e.{n}")));
    select.extend(traits);
    let sql = format!(
        "SELECT {} FROM profiles p LEFT JOIN (SELECT profile_id, {} FROM profile_events \
         WHERE profile_id IS NOT NULL AND {} GROUP BY profile_id) e \
         ON p.profile_id = e.profile_id WHERE p.first_seen <= {} ORDER BY p.profile_id",
        select.join(", "),
        aggs.join(", "),
        window(at, WINDOWS[3]),
        ts(at)
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let names = plan.names();
    let mut out = Table {
        names,
        ids: Vec::new(),
        values: Vec::new(),
    };
    let at_us = at.timestamp_micros();
    for b in &batches {
        append_rows(&mut out, plan, b, at_us, purchases)?;
    }
    Ok(out)
}

fn append_rows(
    out: &mut Table,
    plan: &Plan,
    b: &RecordBatch,
    at_us: i64,
    purchases: &HashMap<String, Purchases>,
) -> Result<()> {
    let ids = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
    let ids = ids.as_string::<i32>();
    // Timestamps as microseconds, counts and traits as f64.
    let micros = |i: usize| -> Result<arrow::array::ArrayRef> {
        Ok(arrow::compute::cast(b.column(i), &DataType::Int64)?)
    };
    let number = |i: usize| -> Result<arrow::array::ArrayRef> {
        Ok(arrow::compute::cast(b.column(i), &DataType::Float64)?)
    };
    let first_seen = micros(1)?;
    let first_seen = first_seen.as_primitive::<Int64Type>();
    let mut col = 2;
    let last_ts = micros(col)?;
    col += 1;
    let windows: Vec<_> = (0..WINDOWS.len())
        .map(|k| number(col + k))
        .collect::<Result<_>>()?;
    col += WINDOWS.len();
    let mut per_event = Vec::new();
    for _ in &plan.events {
        per_event.push((number(col)?, number(col + 1)?, micros(col + 2)?));
        col += 3;
    }
    let numeric: Vec<_> = (0..plan.numeric.len())
        .map(|k| number(col + k))
        .collect::<Result<_>>()?;
    col += plan.numeric.len();
    let booleans: Vec<_> = (0..plan.booleans.len())
        .map(|k| b.column(col + k).clone())
        .collect();
    col += plan.booleans.len();
    let categorical: Vec<_> = (0..plan.categorical.len())
        .map(|k| arrow::compute::cast(b.column(col + k), &DataType::Utf8))
        .collect::<std::result::Result<_, _>>()?;
    let days_since = |a: &dyn Array, i: usize| -> Option<f64> {
        let a = a.as_primitive::<Int64Type>();
        a.is_valid(i)
            .then(|| (at_us - a.value(i)) as f64 / DAY_US as f64)
    };
    let count = |a: &dyn Array, i: usize| -> f64 {
        let a = a.as_primitive::<Float64Type>();
        if a.is_valid(i) { a.value(i) } else { 0.0 }
    };
    for i in 0..b.num_rows() {
        let id = ids.value(i);
        out.ids.push(id.to_string());
        let v = &mut out.values;
        let tenure = if first_seen.is_valid(i) {
            ((at_us - first_seen.value(i)) as f64 / DAY_US as f64).max(0.0)
        } else {
            0.0
        };
        v.push(tenure.ln_1p());
        v.push(recency(days_since(&last_ts, i)));
        for w in &windows {
            v.push(count(w, i).ln_1p());
        }
        for (c30, c90, last) in &per_event {
            v.push(count(c30, i).ln_1p());
            v.push(count(c90, i).ln_1p());
            v.push(recency(days_since(last, i)));
        }
        match purchases.get(id) {
            Some(p) => v.extend([
                1.0,
                p.transactions.ln_1p(),
                p.monetary.max(0.0).ln_1p(),
                recency(Some(p.recency_days)),
                p.p_alive.unwrap_or(0.0),
                p.expected.unwrap_or(0.0).max(0.0).ln_1p(),
            ]),
            None => v.extend([0.0; 6]),
        }
        for a in &numeric {
            let a = a.as_primitive::<Float64Type>();
            let ok = a.is_valid(i) && a.value(i).is_finite();
            v.push(if ok { a.value(i) } else { 0.0 });
            v.push(if ok { 0.0 } else { 1.0 });
        }
        for a in &booleans {
            let a = a.as_boolean();
            v.push(if a.is_valid(i) && a.value(i) {
                1.0
            } else {
                0.0
            });
            v.push(if a.is_valid(i) { 0.0 } else { 1.0 });
        }
        for (a, (_, values)) in categorical.iter().zip(&plan.categorical) {
            let a = a.as_string::<i32>();
            let value = a.is_valid(i).then(|| a.value(i));
            let mut matched = false;
            for known in values {
                let hit = value == Some(known.as_str());
                matched |= hit;
                v.push(if hit { 1.0 } else { 0.0 });
            }
            v.push(if matched { 0.0 } else { 1.0 });
        }
    }
    Ok(())
}

/// Profiles with `event` in `(from, to]`.
pub async fn occurred(
    ctx: &SessionContext,
    event: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<std::collections::HashSet<String>> {
    let days = (to - from).num_days() + 1;
    let sql = format!(
        "SELECT DISTINCT profile_id FROM profile_events WHERE profile_id IS NOT NULL \
         AND coalesce(event, \"type\") = {} AND {} AND \"timestamp\" > {}",
        lit(event),
        window(to, days),
        ts(from)
    );
    let mut out = std::collections::HashSet::new();
    for b in ctx.sql(&sql).await?.collect().await? {
        let ids = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        out.extend(ids.as_string::<i32>().iter().flatten().map(String::from));
    }
    Ok(out)
}
