//! Schedules: which export runs are due, by cron expression in a time zone (with croner), and
//! running them. A scheduled run is keyed by (export, scheduled time) in `export_runs`, so
//! `schedule run` can be called as often as cron likes: a time that was delivered is never run
//! again, times missed while nothing ran are caught up (or skipped, by the export's `missed`),
//! and failed runs are retried after their backoff until their attempts are used up.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::CronParser;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::export::ExportConfig;
use crate::export::run::{RunRequest, run};
use crate::export::runs::{RunRow, Runs, status, time_text};
use crate::workspace::Workspace;

/// At most this many missed times are run in one pass; the rest come in the next.
pub const CATCH_UP_LIMIT: usize = 100;

/// Parses a cron expression: 5 fields, or 6 with seconds, or an alias such as `@daily`.
pub fn parse_cron(expr: &str) -> std::result::Result<Cron, String> {
    CronParser::new()
        .parse(expr)
        .map_err(|e| format!("schedule: {expr:?} is not a cron expression: {e}"))
}

/// Parses an IANA time zone name.
pub fn parse_timezone(name: &str) -> std::result::Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("timezone: {name:?} is not a time zone name such as \"UTC\" or \"Europe/Berlin\"")
    })
}

/// An export's schedule, ready to compute times.
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// The schedule of `def`, if it has one.
    pub fn of(def: &ExportConfig) -> Result<Option<Schedule>> {
        let Some(expr) = &def.schedule else {
            return Ok(None);
        };
        let cron = parse_cron(expr).map_err(Error::Input)?;
        let tz = parse_timezone(&def.timezone).map_err(Error::Input)?;
        Ok(Some(Schedule { cron, tz }))
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last scheduled time at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Scheduled times after `after` up to and including `now`, oldest first, at most `limit`.
    pub fn between(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut times = Vec::new();
        let mut t = after;
        while times.len() < limit {
            match self.next_after(t) {
                Some(next) if next <= now => {
                    times.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        times
    }
}

/// What is due for one export now.
#[derive(Debug, Default, PartialEq)]
pub struct Due {
    /// Times to run, oldest first, with the attempt number.
    pub run: Vec<(DateTime<Utc>, i64)>,
    /// Missed times to record as skipped.
    pub skip: Vec<DateTime<Utc>>,
    /// Failed times waiting for their retry: (time, retry at).
    pub waiting: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

/// The due work of an export, from its runs' latest states.
pub fn due(schedule: &Schedule, def: &ExportConfig, latest: &[RunRow], now: DateTime<Utc>) -> Due {
    let mut by_time: BTreeMap<i64, Vec<&RunRow>> = BTreeMap::new();
    for r in latest {
        if let Some(t) = r.scheduled_for {
            by_time.entry(t).or_default().push(r);
        }
    }
    let at = |us: i64| DateTime::<Utc>::from_timestamp_micros(us).expect("valid time");
    let mut due = Due::default();
    // Times already tried: retry the failed and abandoned ones that have attempts left.
    for (&t, rows) in &by_time {
        if rows
            .iter()
            .any(|r| r.status == status::DELIVERED || r.status == status::SKIPPED)
        {
            continue;
        }
        // A run in progress is left alone; one whose process died is run again (the run first
        // finds out whether the dead one got as far as delivering).
        let running = rows.iter().find(|r| r.status == status::RUNNING);
        if running.is_some_and(|r| !crate::export::runs::claim_dead(r, now)) {
            continue;
        }
        let attempts = rows.iter().map(|r| r.attempt).max().unwrap_or(0);
        let last = rows
            .iter()
            .max_by_key(|r| r.recorded_at)
            .expect("a row per time");
        if attempts >= def.max_attempts as i64 {
            continue;
        }
        match (last.status.as_str(), last.retry_at) {
            (status::ABANDONED | status::RUNNING, _) => due.run.push((at(t), attempts + 1)),
            (_, Some(retry)) if retry <= now.timestamp_micros() => {
                due.run.push((at(t), attempts + 1))
            }
            (_, Some(retry)) => due.waiting.push((at(t), at(retry))),
            _ => {}
        }
    }
    // New times: since the last scheduled time tried, or only the latest one for an export
    // that has never run on schedule (a new schedule does not replay history).
    let new: Vec<DateTime<Utc>> = match by_time.keys().next_back() {
        Some(&last) => schedule.between(at(last), now, CATCH_UP_LIMIT),
        None => schedule.last_at_or_before(now).into_iter().collect(),
    };
    if def.missed == "latest" && new.len() > 1 {
        due.skip = new[..new.len() - 1].to_vec();
        due.run.push((*new.last().expect("non-empty"), 1));
    } else {
        due.run.extend(new.into_iter().map(|t| (t, 1)));
    }
    due.run.sort();
    due
}

/// One line of a `schedule run` report.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledRun {
    pub export: String,
    pub scheduled_for: String,
    /// delivered, already delivered, recovered, failed, skipped, waiting, in progress
    pub outcome: String,
    pub attempt: i64,
    pub run_id: String,
    pub audience: Option<u64>,
    pub adds: Option<u64>,
    pub removes: Option<u64>,
    pub detail: String,
}

impl ScheduledRun {
    fn new(export: &str, t: DateTime<Utc>, outcome: &str, attempt: i64, detail: String) -> Self {
        ScheduledRun {
            export: export.to_string(),
            scheduled_for: time_text(t.timestamp_micros()),
            outcome: outcome.to_string(),
            attempt,
            run_id: String::new(),
            audience: None,
            adds: None,
            removes: None,
            detail,
        }
    }
}

/// Runs every export run that is due at `now`, in order of export and time.
pub async fn run_due(ws: &Workspace, now: DateTime<Utc>) -> Result<Vec<ScheduledRun>> {
    let mut report = Vec::new();
    for (name, def) in &ws.config.exports {
        let Some(schedule) = Schedule::of(def)? else {
            continue;
        };
        let mut runs = Runs::load(&ws.storage, name).await?;
        let due = due(&schedule, def, &runs.latest(), now);
        let skipped: Vec<RunRow> = due
            .skip
            .iter()
            .map(|t| RunRow {
                export: name.clone(),
                run_id: format!("{}-skipped", t.format("%Y%m%dT%H%M%SZ")),
                status: status::SKIPPED.into(),
                trigger: "schedule".into(),
                scheduled_for: Some(t.timestamp_micros()),
                as_of: t.timestamp_micros(),
                attempt: 0,
                owner: crate::export::runs::owner(),
                recorded_at: now.timestamp_micros(),
                error: Some("missed while nothing was running (missed = \"latest\")".into()),
                ..Default::default()
            })
            .collect();
        // A conflict means another scheduler is on it; it records them.
        if runs.append(&ws.storage, &skipped).await? {
            report.extend(due.skip.iter().map(|t| {
                let detail = "missed; only the latest missed time runs".to_string();
                ScheduledRun::new(name, *t, "skipped", 0, detail)
            }));
        }
        report.extend(due.waiting.iter().map(|(t, retry)| {
            let detail = format!(
                "failed; next attempt at {}",
                time_text(retry.timestamp_micros())
            );
            ScheduledRun::new(name, *t, "waiting", 0, detail)
        }));
        for (t, attempt) in due.run {
            let req = RunRequest {
                as_of: t,
                scheduled_for: Some(t),
                attempt,
            };
            report.push(match run(ws, name, &req).await {
                Ok(o) => ScheduledRun {
                    run_id: o.run_id,
                    audience: Some(o.audience),
                    adds: Some(o.adds),
                    removes: Some(o.removes),
                    ..ScheduledRun::new(name, t, &o.status, attempt, o.destination)
                },
                Err(e) => {
                    let outcome = if matches!(e, Error::Busy(_)) {
                        "in progress"
                    } else {
                        "failed"
                    };
                    ScheduledRun::new(name, t, outcome, attempt, e.to_string())
                }
            });
        }
    }
    Ok(report)
}

/// The next scheduled time of any export after `now`. Retries are not in it: a serving
/// scheduler looks again at least every minute, which finds them.
pub fn next_scheduled(ws: &Workspace, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
    let mut next: Option<DateTime<Utc>> = None;
    for def in ws.config.exports.values() {
        if let Some(t) = Schedule::of(def)?.and_then(|s| s.next_after(now))
            && next.is_none_or(|n| t < n)
        {
            next = Some(t);
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn def(cron: &str, tz: &str) -> ExportConfig {
        let mut d = ExportConfig::new("s");
        d.schedule = Some(cron.into());
        d.timezone = tz.into();
        d
    }

    fn row(time: &str, status: &str, attempt: i64, retry: Option<&str>) -> RunRow {
        RunRow {
            run_id: format!("{time}-{attempt}"),
            status: status.into(),
            scheduled_for: Some(t(time).timestamp_micros()),
            attempt,
            recorded_at: t(time).timestamp_micros() + attempt,
            retry_at: retry.map(|r| t(r).timestamp_micros()),
            ..Default::default()
        }
    }

    #[test]
    fn times_follow_the_time_zone_across_daylight_saving() {
        let d = def("0 6 * * *", "Europe/Berlin");
        let s = Schedule::of(&d).unwrap().unwrap();
        // 06:00 in Berlin is 04:00 UTC in summer and 05:00 UTC in winter; DST ended 2026-10-25.
        let times = s.between(t("2026-10-23T12:00:00Z"), t("2026-10-27T12:00:00Z"), 10);
        let got: Vec<String> = times
            .iter()
            .map(|x| time_text(x.timestamp_micros()))
            .collect();
        assert_eq!(
            got,
            [
                "2026-10-24T04:00:00Z",
                "2026-10-25T05:00:00Z",
                "2026-10-26T05:00:00Z",
                "2026-10-27T05:00:00Z"
            ]
        );
    }

    #[test]
    fn a_new_schedule_runs_only_its_latest_time() {
        let d = def("0 * * * *", "UTC");
        let s = Schedule::of(&d).unwrap().unwrap();
        let due = due(&s, &d, &[], t("2026-06-30T10:30:00Z"));
        assert_eq!(due.run, [(t("2026-06-30T10:00:00Z"), 1)]);
    }

    #[test]
    fn missed_times_are_caught_up_or_skipped() {
        let mut d = def("0 * * * *", "UTC");
        let s = Schedule::of(&d).unwrap().unwrap();
        let done = [row("2026-06-30T07:00:00Z", status::DELIVERED, 1, None)];
        let now = t("2026-06-30T10:30:00Z");
        let caught = due(&s, &d, &done, now);
        let hours: Vec<u32> = caught
            .run
            .iter()
            .map(|(x, _)| chrono::Timelike::hour(x))
            .collect();
        assert_eq!(hours, [8, 9, 10]);
        d.missed = "latest".into();
        let latest = due(&s, &d, &done, now);
        assert_eq!(latest.run, [(t("2026-06-30T10:00:00Z"), 1)]);
        assert_eq!(latest.skip.len(), 2);
        // Nothing is due twice.
        let all_done: Vec<RunRow> = [7, 8, 9, 10]
            .iter()
            .map(|h| {
                row(
                    &format!("2026-06-30T{h:02}:00:00Z"),
                    status::DELIVERED,
                    1,
                    None,
                )
            })
            .collect();
        assert_eq!(due(&s, &d, &all_done, now), Due::default());
    }

    #[test]
    fn failures_retry_after_their_backoff_until_attempts_run_out() {
        let d = def("0 * * * *", "UTC");
        let s = Schedule::of(&d).unwrap().unwrap();
        let failed = [row(
            "2026-06-30T10:00:00Z",
            status::FAILED,
            1,
            Some("2026-06-30T10:05:00Z"),
        )];
        let early = due(&s, &d, &failed, t("2026-06-30T10:02:00Z"));
        assert!(early.run.is_empty());
        assert_eq!(early.waiting.len(), 1);
        let later = due(&s, &d, &failed, t("2026-06-30T10:06:00Z"));
        assert_eq!(later.run, [(t("2026-06-30T10:00:00Z"), 2)]);
        let exhausted = [row("2026-06-30T10:00:00Z", status::FAILED, 3, None)];
        let none = due(&s, &d, &exhausted, t("2026-06-30T10:59:00Z"));
        assert_eq!(none, Due::default());
    }
}
