//! `tribe export …`, `tribe schedule …` and `tribe serve`: flags and printing for activation;
//! the work is in `tribe::export` and `tribe::schedule`.

use std::io::Write;
use std::process::ExitCode;

use chrono::Utc;
use clap::Subcommand;

use tribe::export::RunRequest;
use tribe::output::{OutputFormat, print_report, print_rows};
use tribe::{Result, Workspace};

use crate::cli::{FormatArg, stdout_error as io, with_spinner};

#[derive(Subcommand)]
pub enum ExportCommand {
    /// Run an export now: write the audience, adds, removes and manifest.
    Run {
        export: String,
        /// The time the segment is evaluated at (date or RFC 3339 timestamp; default now).
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Every export with its segment, destination, schedule, last run and next run.
    List {
        #[command(flatten)]
        format: FormatArg,
    },
    /// The runs of an export with their counts, status and errors.
    History {
        export: String,
        #[command(flatten)]
        format: FormatArg,
    },
}

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Run every scheduled export run that is due (missed ones and retries included), then
    /// exit. Safe to call from cron as often as you like: a scheduled time is delivered once.
    Run {
        #[command(flatten)]
        format: FormatArg,
    },
}

pub async fn export(
    command: ExportCommand,
    open: impl Fn() -> Result<Workspace>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    match command {
        ExportCommand::Run {
            export,
            as_of,
            format,
        } => {
            let ws = open()?;
            let as_of = tribe::segment::parse_as_of(as_of.as_deref())?;
            let request = RunRequest {
                as_of,
                scheduled_for: None,
                attempt: 1,
            };
            let outcome =
                with_spinner("exporting", tribe::export::run::run(&ws, &export, &request)).await?;
            for note in &outcome.notes {
                eprintln!("note: {note}");
            }
            print_report(&outcome, format.format, out)?;
            Ok(ExitCode::SUCCESS)
        }
        ExportCommand::List { format } => {
            let ws = open()?;
            let rows = tribe::export::list(&ws, Utc::now()).await?;
            if rows.is_empty() && format.format == OutputFormat::Table {
                writeln!(
                    out,
                    "no exports: add [exports.NAME] to tribe.toml or a file exports/NAME.toml"
                )
                .map_err(io)?;
                return Ok(ExitCode::SUCCESS);
            }
            print_rows(&rows, format.format, out)?;
            Ok(ExitCode::SUCCESS)
        }
        ExportCommand::History { export, format } => {
            let ws = open()?;
            let rows = tribe::export::history(&ws, &export).await?;
            if rows.is_empty() && format.format == OutputFormat::Table {
                writeln!(out, "export {export} has not run yet").map_err(io)?;
                return Ok(ExitCode::SUCCESS);
            }
            print_rows(&rows, format.format, out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Exit code 1 when a due run failed, so cron mails it.
pub async fn schedule(
    command: ScheduleCommand,
    open: impl Fn() -> Result<Workspace>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    match command {
        ScheduleCommand::Run { format } => {
            let ws = open()?;
            let report = tribe::schedule::run_due(&ws, Utc::now()).await?;
            if report.is_empty() && format.format == OutputFormat::Table {
                writeln!(out, "nothing is due").map_err(io)?;
            } else {
                print_rows(&report, format.format, out)?;
            }
            let failed = report.iter().any(|r| r.outcome == "failed");
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
