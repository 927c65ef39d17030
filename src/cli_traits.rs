//! `tribe traits …`: flags and printing for computed traits; the work is in `tribe::traits`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use tribe::output::print_report;
use tribe::{Error, Result};

use crate::cli::FormatArg;

#[derive(Subcommand)]
pub enum TraitsCommand {
    /// Compute RFM, BG/NBD and Gamma-Gamma traits of every buyer into the `traits` table.
    Compute {
        /// The time the traits describe (date or RFC 3339 timestamp; default now).
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Fit BG/NBD and Gamma-Gamma to a raw CDNOW file (the 5-column sample or the master with
    /// its header), calibration to 1997-09-30 in weeks, and print the parameters.
    FitCdnow {
        file: PathBuf,
        #[command(flatten)]
        format: FormatArg,
    },
}

pub async fn run(
    command: TraitsCommand,
    cwd: &std::path::Path,
    open: impl Fn() -> Result<tribe::Workspace>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    match command {
        TraitsCommand::Compute { as_of, format } => {
            let ws = open()?;
            let as_of = tribe::segment::parse_as_of(as_of.as_deref())?;
            let report = tribe::traits::compute::compute(&ws, as_of).await?;
            for reason in &report.not_produced {
                eprintln!("warning: not produced: {reason}");
            }
            print_report(&report, format.format, out)?;
            Ok(ExitCode::SUCCESS)
        }
        TraitsCommand::FitCdnow { file, format } => {
            let started = std::time::Instant::now();
            let fit = tribe::traits::cdnow::fit(&cwd.join(file))?;
            print_report(&fit, format.format, out)?;
            if format.format == tribe::output::OutputFormat::Table {
                writeln!(out, "fitted in {:.2} s", started.elapsed().as_secs_f64())
                    .map_err(|e| Error::io("<stdout>", e))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
