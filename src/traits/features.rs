//! Features for propensity models, per profile as of a time: activity over several windows,
//! per event type counts and recency, tenure, purchase history (RFM and BG/NBD outputs) and
//! the profile's own numeric, boolean and categorical traits. The same definitions serve for
//! training (as of a cutoff) and scoring (as of the as-of time), so a model always sees
//! features built the same way.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use xxhash_rust::xxh3::Xxh3Builder;

use crate::error::Result;
use crate::sql::{ident, lit, ts};

const DAY_US: i64 = 86_400_000_000;
/// Event types with their own features: the most frequent ones.
const TOP_EVENTS: usize = 12;
/// Categorical traits with more distinct values than this (names, ids) are not features.
const MAX_CATEGORIES: usize = 20;
/// Values of a categorical trait that get their own indicator; the rest share "other".
const TOP_CATEGORIES: usize = 10;
/// Activity windows, in days; event features look back over the longest.
const WINDOWS: [i64; 4] = [7, 30, 90, 365];

// The columns every profile has describe identity resolution rather than the person, or are
// counted up to now and would leak the future into a model trained on the past.
use crate::identity::tables::FIXED as SYSTEM_COLUMNS;

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
        "SELECT coalesce(event, \"type\") AS ev, count(*) AS n FROM events \
         WHERE {} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {TOP_EVENTS}",
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
    // Distinct counts of every text column in one read; the top values only for the few
    // columns with few values.
    let mut categorical = Vec::new();
    let few: Vec<String> = if strings.is_empty() {
        Vec::new()
    } else {
        let counts: Vec<String> = strings
            .iter()
            .map(|c| format!("CAST(approx_distinct({}) AS BIGINT)", ident(c)))
            .collect();
        let batches = ctx
            .sql(&format!("SELECT {} FROM profiles", counts.join(", ")))
            .await?
            .collect()
            .await?;
        let b = batches.first();
        strings
            .iter()
            .enumerate()
            .filter(|(k, _)| {
                b.is_some_and(|b| {
                    let n = b.column(*k).as_primitive::<Int64Type>().value(0);
                    // approx_distinct is exact at this size; a margin keeps borderline columns.
                    n > 0 && n <= MAX_CATEGORIES as i64 + 2
                })
            })
            .map(|(_, c)| c.clone())
            .collect()
    };
    for col in few {
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

/// Counters one pass over `profile_events` keeps per profile and time point: the last event,
/// counts per activity window, and per top event counts over 30 and 90 days and the last one.
/// Times are kept as seconds after the scan's start (0: none): a million profiles with three
/// time points and twelve events take about 0.5 GB per scan partition.
fn activity_slots(events: usize) -> usize {
    event_slot(events)
}

/// Where event `e`'s three counters start: 30-day count, 90-day count, last time.
fn event_slot(e: usize) -> usize {
    1 + WINDOWS.len() + 3 * e
}

/// Whether counter `k` is a time (slot 0 and each event's last), merged by the later.
fn is_time_slot(k: usize) -> bool {
    k == 0 || (k >= event_slot(0) && (k - event_slot(0)) % 3 == 2)
}

/// A label to collect in the same pass: profiles with `event` after `from`.
pub struct LabelSpec {
    pub event: String,
    pub from: DateTime<Utc>,
}

/// Feature tables for every time of `times` (each with its own purchase summaries) and, per
/// label spec, the profiles that had the event, from one pass over the events in the year
/// before the earliest time up to the latest, and one read of `profiles`.
pub async fn tables(
    ctx: &SessionContext,
    plan: &Plan,
    times: &[DateTime<Utc>],
    purchases: &[HashMap<String, Purchases>],
    labels: &[LabelSpec],
) -> Result<(Vec<Table>, Vec<HashSet<String>>)> {
    use futures::StreamExt;
    let latest = *times.iter().max().expect("at least one time");
    let earliest = *times.iter().min().expect("at least one time");
    let span_days = (latest - earliest).num_days() + WINDOWS[3] + 1;
    let start_us = (latest - chrono::Duration::days(span_days)).timestamp_micros();
    // The event's feature slot and the labels are computed by the engine, vectorised, rather
    // than by comparing strings per row here.
    let ev = "coalesce(event, \"type\")";
    let slot = if plan.events.is_empty() {
        "-1".to_string()
    } else {
        let arms: Vec<String> = plan
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| format!("WHEN {} THEN {i}", lit(e)))
            .collect();
        format!("CASE {ev} {} ELSE -1 END", arms.join(" "))
    };
    let mut select = vec![
        "profile_id".to_string(),
        format!("CAST({slot} AS INT)"),
        "\"timestamp\"".to_string(),
    ];
    select.extend(labels.iter().map(|l| {
        format!(
            "coalesce({ev} = {} AND \"timestamp\" > {}, false)",
            lit(&l.event),
            ts(l.from)
        )
    }));
    let sql = format!(
        "SELECT {} FROM profile_events WHERE profile_id IS NOT NULL AND {}",
        select.join(", "),
        window(latest, span_days)
    );
    let pass = Pass {
        slots: activity_slots(plan.events.len()),
        time_us: times.iter().map(|t| t.timestamp_micros()).collect(),
        start_us,
        labels: labels.len(),
    };
    // One task per partition of the scan, each with its own counters, merged at the end: the
    // per-event updates then run on every core instead of one.
    let streams = ctx.sql(&sql).await?.execute_stream_partitioned().await?;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let pass = pass.clone();
            tokio::spawn(async move {
                let mut activity = Activity::new(pass.labels);
                while let Some(batch) = stream.next().await {
                    activity.add(&pass, &batch?)?;
                }
                Ok::<_, crate::error::Error>(activity)
            })
        })
        .collect();
    let mut activity: Option<Activity> = None;
    for task in tasks {
        let part = task
            .await
            .map_err(|e| crate::error::Error::Other(format!("feature pass: {e}")))??;
        match activity.as_mut() {
            Some(all) => all.merge(part, &pass),
            None => activity = Some(part),
        }
    }
    let activity = activity.unwrap_or_else(|| Activity::new(pass.labels));
    let Activity {
        profiles,
        counters: activity,
        happened,
    } = activity;
    let slots = pass.slots;
    let people = profile_rows(ctx, plan).await?;
    let mut out = Vec::with_capacity(times.len());
    for (j, at) in times.iter().enumerate() {
        let mut table = Table {
            names: plan.names(),
            ids: Vec::new(),
            values: Vec::new(),
        };
        let at_us = at.timestamp_micros();
        // Seconds after the scan's start to days before `at`; 0 is "never".
        let days_before = |secs: u32| {
            (secs > 0)
                .then(|| (at_us - start_us - i64::from(secs) * 1_000_000) as f64 / DAY_US as f64)
        };
        for person in people
            .iter()
            .filter(|p| p.first_seen.is_some_and(|f| f <= at_us))
        {
            table.ids.push(person.id.clone());
            let v = &mut table.values;
            let tenure = (at_us - person.first_seen.unwrap_or(at_us)) as f64 / DAY_US as f64;
            v.push(tenure.max(0.0).ln_1p());
            match profiles.get(&person.id) {
                Some(p) => {
                    let base = (p as usize * times.len() + j) * slots;
                    let a = &activity[base..base + slots];
                    v.push(recency(days_before(a[0])));
                    v.extend(a[1..=WINDOWS.len()].iter().map(|c| f64::from(*c).ln_1p()));
                    for e in 0..plan.events.len() {
                        let o = event_slot(e);
                        v.push(f64::from(a[o]).ln_1p());
                        v.push(f64::from(a[o + 1]).ln_1p());
                        v.push(recency(days_before(a[o + 2])));
                    }
                }
                None => v.extend(std::iter::repeat_n(0.0, slots)),
            }
            match purchases[j].get(&person.id) {
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
            v.extend_from_slice(&person.traits);
        }
        out.push(table);
    }
    let happened = happened
        .into_iter()
        .map(|set| {
            set.into_iter()
                .map(|p| profiles.ids[p as usize].clone())
                .collect()
        })
        .collect();
    Ok((out, happened))
}

/// What the pass over events knows: how many counters per profile and time point, the time
/// points, the start of the scan and the number of labels.
#[derive(Clone)]
struct Pass {
    slots: usize,
    time_us: Vec<i64>,
    start_us: i64,
    labels: usize,
}

/// Counters one part of the pass keeps: `slots` per profile and time point, and per label
/// the profiles that had the event.
struct Activity {
    profiles: ProfileIndex,
    counters: Vec<u32>,
    happened: Vec<HashSet<u32>>,
}

impl Activity {
    fn new(labels: usize) -> Activity {
        Activity {
            profiles: ProfileIndex::default(),
            counters: Vec::new(),
            happened: (0..labels).map(|_| HashSet::new()).collect(),
        }
    }

    /// The profile's index, added with zeroed counters when new.
    fn index(&mut self, id: &str, pass: &Pass) -> u32 {
        match self.profiles.get(id) {
            Some(p) => p,
            None => {
                let width = pass.slots * pass.time_us.len();
                self.counters.resize(self.counters.len() + width, 0);
                self.profiles.insert(id)
            }
        }
    }

    /// Counts the events of `b` (profile id, event slot, time, one flag per label).
    fn add(&mut self, pass: &Pass, b: &arrow::array::RecordBatch) -> Result<()> {
        let ids = arrow::compute::cast(b.column(0), &DataType::Utf8View)?;
        let ids = ids.as_string_view();
        let slots_of = b.column(1).as_primitive::<Int32Type>();
        let stamps = arrow::compute::cast(b.column(2), &DataType::Int64)?;
        let stamps = stamps.as_primitive::<Int64Type>();
        let flags: Vec<_> = (0..pass.labels)
            .map(|k| b.column(3 + k).as_boolean())
            .collect();
        let slots = pass.slots;
        for i in 0..b.num_rows() {
            let p = self.index(ids.value(i), pass);
            let t = stamps.value(i);
            for (k, f) in flags.iter().enumerate() {
                if f.value(i) {
                    self.happened[k].insert(p);
                }
            }
            let e = usize::try_from(slots_of.value(i)).ok();
            let secs = ((t - pass.start_us) / 1_000_000).max(1) as u32;
            for (j, &at) in pass.time_us.iter().enumerate() {
                if t > at {
                    continue;
                }
                let base = (p as usize * pass.time_us.len() + j) * slots;
                let v = &mut self.counters[base..base + slots];
                v[0] = v[0].max(secs);
                for (w, days) in WINDOWS.iter().enumerate() {
                    if t > at - days * DAY_US {
                        v[1 + w] += 1;
                    }
                }
                if let Some(e) = e {
                    let o = event_slot(e);
                    v[o] += u32::from(t > at - 30 * DAY_US);
                    v[o + 1] += u32::from(t > at - 90 * DAY_US);
                    v[o + 2] = v[o + 2].max(secs);
                }
            }
        }
        Ok(())
    }

    /// Adds another part's counters: counts add up, last times take the later.
    fn merge(&mut self, other: Activity, pass: &Pass) {
        let width = pass.slots * pass.time_us.len();
        let index: Vec<u32> = other
            .profiles
            .ids
            .iter()
            .map(|id| self.index(id, pass))
            .collect();
        let times: Vec<bool> = (0..pass.slots).map(is_time_slot).collect();
        for (q, &p) in index.iter().enumerate() {
            let theirs = &other.counters[q * width..(q + 1) * width];
            let ours = &mut self.counters[p as usize * width..(p as usize + 1) * width];
            for (ours, theirs) in ours.chunks_mut(pass.slots).zip(theirs.chunks(pass.slots)) {
                for ((a, b), &time) in ours.iter_mut().zip(theirs).zip(&times) {
                    *a = if time { (*a).max(*b) } else { *a + b };
                }
            }
        }
        for (set, theirs) in self.happened.iter_mut().zip(other.happened) {
            set.extend(theirs.into_iter().map(|q| index[q as usize]));
        }
    }
}

/// Dense indexes of profile ids. tribe's ids (`p_` and 16 hex digits) are looked up as the
/// number they spell, which spares hashing and comparing strings for every event; other ids
/// (from older workspaces) by their text.
#[derive(Default)]
struct ProfileIndex {
    numeric: HashMap<u64, u32, Xxh3Builder>,
    text: HashMap<String, u32, Xxh3Builder>,
    ids: Vec<String>,
}

impl ProfileIndex {
    fn number(id: &str) -> Option<u64> {
        let hex = id.strip_prefix("p_")?;
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    }

    fn get(&self, id: &str) -> Option<u32> {
        match Self::number(id) {
            Some(n) => self.numeric.get(&n).copied(),
            None => self.text.get(id).copied(),
        }
    }

    fn insert(&mut self, id: &str) -> u32 {
        let p = self.ids.len() as u32;
        match Self::number(id) {
            Some(n) => self.numeric.insert(n, p),
            None => self.text.insert(id.to_string(), p),
        };
        self.ids.push(id.to_string());
        p
    }
}

/// A profile's first sighting and its trait features, in the plan's order.
struct Person {
    id: String,
    first_seen: Option<i64>,
    traits: Vec<f64>,
}

async fn profile_rows(ctx: &SessionContext, plan: &Plan) -> Result<Vec<Person>> {
    let mut select = vec!["profile_id".to_string(), "first_seen".to_string()];
    select.extend(
        plan.numeric
            .iter()
            .map(|c| format!("CAST({} AS DOUBLE)", ident(c))),
    );
    select.extend(plan.booleans.iter().map(|c| ident(c)));
    select.extend(
        plan.categorical
            .iter()
            .map(|(c, _)| format!("CAST({} AS VARCHAR)", ident(c))),
    );
    let sql = format!(
        "SELECT {} FROM profiles ORDER BY profile_id",
        select.join(", ")
    );
    let mut people = Vec::new();
    for b in ctx.sql(&sql).await?.collect().await? {
        let ids = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let first = arrow::compute::cast(b.column(1), &DataType::Int64)?;
        let first = first.as_primitive::<Int64Type>();
        let mut col = 2;
        let numeric: Vec<_> = (0..plan.numeric.len())
            .map(|k| arrow::compute::cast(b.column(col + k), &DataType::Float64))
            .collect::<std::result::Result<_, _>>()?;
        col += plan.numeric.len();
        let booleans: Vec<_> = (0..plan.booleans.len())
            .map(|k| b.column(col + k).clone())
            .collect();
        col += plan.booleans.len();
        let categorical: Vec<_> = (0..plan.categorical.len())
            .map(|k| arrow::compute::cast(b.column(col + k), &DataType::Utf8))
            .collect::<std::result::Result<_, _>>()?;
        for i in 0..b.num_rows() {
            let mut v = Vec::new();
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
            people.push(Person {
                id: ids.value(i).to_string(),
                first_seen: first.is_valid(i).then(|| first.value(i)),
                traits: v,
            });
        }
    }
    Ok(people)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray};

    use super::*;

    fn batch(rows: &[(&str, i32, i64, bool)]) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as _,
            ),
            (
                "slot",
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))) as _,
            ),
            (
                "t",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))) as _,
            ),
            (
                "label",
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.3)))) as _,
            ),
        ])
        .unwrap()
    }

    /// Counters and labels by profile id, to compare activities whose indexes differ.
    fn by_id(a: &Activity, pass: &Pass) -> Vec<(String, Vec<u32>, bool)> {
        let width = pass.slots * pass.time_us.len();
        let mut out: Vec<_> = a
            .profiles
            .ids
            .iter()
            .enumerate()
            .map(|(p, id)| {
                let counters = a.counters[p * width..(p + 1) * width].to_vec();
                (id.clone(), counters, a.happened[0].contains(&(p as u32)))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn parts_merged_count_what_one_pass_counts() {
        let day = DAY_US;
        let pass = Pass {
            slots: activity_slots(2),
            time_us: vec![100 * day, 120 * day],
            start_us: 0,
            labels: 1,
        };
        let first = batch(&[
            ("p_0000000000000001", 0, 95 * day, false),
            ("p_0000000000000002", 1, 110 * day, true),
            ("p_0000000000000001", -1, 60 * day, false),
        ]);
        let second = batch(&[
            ("p_0000000000000001", 0, 99 * day, false),
            ("p_0000000000000003", 1, 10 * day, false),
            ("p_0000000000000002", 1, 30 * day, false),
        ]);
        let mut whole = Activity::new(1);
        whole.add(&pass, &first).unwrap();
        whole.add(&pass, &second).unwrap();
        let (mut a, mut b) = (Activity::new(1), Activity::new(1));
        a.add(&pass, &first).unwrap();
        b.add(&pass, &second).unwrap();
        a.merge(b, &pass);
        assert_eq!(by_id(&a, &pass), by_id(&whole, &pass));
        // p1 as of day 100: last event 99 days in, 2 events in 7 days, 3 in 90, slot 0 twice
        // in 30 days, last at day 99.
        let p1 = &by_id(&a, &pass)[0].1[..pass.slots];
        assert_eq!(p1[0], (99 * 86_400) as u32);
        assert_eq!(&p1[1..=4], &[2, 2, 3, 3]);
        assert_eq!(&p1[5..8], &[2, 2, (99 * 86_400) as u32]);
    }
}
