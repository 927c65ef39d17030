//! `tribe traits …`: flags and printing for computed traits; the work is in `tribe::traits`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use tribe::Result;
use tribe::output::print_report;

use crate::cli::FormatArg;

#[derive(Subcommand)]
pub enum TraitsCommand {
    /// Compute RFM, BG/NBD, Gamma-Gamma and propensity traits of every profile into the
    /// `traits` table, and the fitted models into `trait_models`.
    Compute {
        /// The time the traits describe (date or RFC 3339 timestamp; default now).
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// What the last `traits compute` fitted: each model's parameters and held-out metrics,
    /// the propensity models' calibration, and the distribution of every trait.
    Report {
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
        TraitsCommand::Report { format } => {
            let ws = open()?;
            let report = tribe::traits::report::report(&ws).await?;
            print_traits_report(&report, format.format, out)?;
            Ok(ExitCode::SUCCESS)
        }
        TraitsCommand::FitCdnow { file, format } => {
            let started = std::time::Instant::now();
            let fit = tribe::traits::cdnow::fit(&cwd.join(file))?;
            print_report(&fit, format.format, out)?;
            if format.format == tribe::output::OutputFormat::Table {
                writeln!(out, "fitted in {:.2} s", started.elapsed().as_secs_f64())
                    .map_err(crate::cli::stdout_error)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// JSON: the whole report. Table and CSV: one section after another, each with its title.
fn print_traits_report(
    report: &tribe::traits::report::Report,
    format: tribe::output::OutputFormat,
    out: &mut dyn Write,
) -> Result<()> {
    use tribe::output::{OutputFormat, print_rows};
    let io = crate::cli::stdout_error;
    if format == OutputFormat::Json {
        return print_report(report, format, out);
    }
    #[derive(serde::Serialize)]
    struct Model<'a> {
        model: &'a str,
        kind: &'a str,
        summary: &'a str,
    }
    let models: Vec<Model> = report
        .models
        .iter()
        .map(|m| Model {
            model: &m.model,
            kind: &m.kind,
            summary: &m.summary,
        })
        .collect();
    let title = |out: &mut dyn Write, t: &str| -> Result<()> {
        if format == OutputFormat::Csv {
            writeln!(out, "# {t}").map_err(io)
        } else {
            writeln!(out, "{t}").map_err(io)
        }
    };
    title(out, &format!("models (as of {})", report.as_of))?;
    print_rows(&models, format, out)?;
    if !report.calibration.is_empty() {
        writeln!(out).map_err(io)?;
        title(
            out,
            "calibration on held-out profiles (deciles of predicted probability)",
        )?;
        print_rows(&report.calibration, format, out)?;
    }
    writeln!(out).map_err(io)?;
    title(out, "distributions")?;
    print_rows(&report.distributions, format, out)?;
    if !report.rfm_groups.is_empty() {
        writeln!(out).map_err(io)?;
        title(out, "RFM groups (buyers)")?;
        print_rows(&report.rfm_groups, format, out)?;
    }
    Ok(())
}
