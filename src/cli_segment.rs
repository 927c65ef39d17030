//! `tribe segment …`: flags and printing for the segment commands; the work is in
//! `tribe::segment`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Subcommand;

use tribe::output::{OutputFormat, print_report, print_rows, print_stream};
use tribe::segment::{Dialect, Segments, parse_as_of};
use tribe::{Result, Workspace};

use crate::cli::FormatArg;

#[derive(Subcommand)]
pub enum SegmentCommand {
    /// Every segment of the workspace's .seg files (the `queries/` folder by default).
    List {
        #[command(flatten)]
        format: FormatArg,
    },
    /// Compile every segment and report every error of every file.
    Check {
        /// As-of time to compile for (date or RFC 3339 timestamp; default now).
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Run a segment: its member profile ids (or only how many with --count).
    Run {
        name: String,
        /// The time `now` stands for in windows (date or RFC 3339 timestamp; default now).
        #[arg(long)]
        as_of: Option<String>,
        /// Print only the number of members.
        #[arg(long)]
        count: bool,
        /// Store the membership in `segment_members` (replacing the segment's previous rows).
        #[arg(long)]
        save: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Print the SQL a segment compiles to, for tribe or another engine.
    Compile {
        name: String,
        #[arg(long)]
        as_of: Option<String>,
        #[arg(long, value_enum, default_value_t = Dialect::Datafusion)]
        dialect: Dialect,
    },
    /// The compiled SQL with DataFusion's logical and physical plans.
    Explain {
        name: String,
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Why a profile is or is not a member: each condition's value for it, and whether it held.
    Why {
        name: String,
        /// A profile id or any identifier of the profile (e-mail, phone, user id, ...).
        profile: String,
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
}

pub async fn run(ws: &Workspace, command: SegmentCommand, out: &mut dyn Write) -> Result<ExitCode> {
    let io = crate::cli::stdout_error;
    let segments = Segments::open(ws).await?;
    match command {
        SegmentCommand::List { format } => {
            print_rows(&segments.list(), format.format, out)?;
        }
        SegmentCommand::Check { as_of, format } => {
            let report = segments.check(parse_as_of(as_of.as_deref())?);
            if format.format == OutputFormat::Json {
                let errors: Vec<serde_json::Value> = report
                    .errors
                    .iter()
                    .map(|(f, d)| {
                        let source = segments.library.files.get(*f).map(|f| &f.source);
                        let (line, column) = source.map_or((0, 0), |s| s.line_col(d.span.start));
                        serde_json::json!({
                            "file": source.map(|s| s.path.clone()),
                            "line": line, "column": column,
                            "message": d.message, "help": d.help,
                        })
                    })
                    .collect();
                let doc = serde_json::json!({
                    "files": report.files, "segments": report.segments,
                    "compiled": report.compiled, "errors": errors,
                });
                print_report(&doc, OutputFormat::Json, out)?;
            } else {
                let color = std::io::stderr().is_terminal();
                eprint!("{}", segments.render(&report.errors, color));
                writeln!(
                    out,
                    "{} file(s), {} segment(s), {} compiled, {} error(s)",
                    report.files,
                    report.segments,
                    report.compiled,
                    report.errors.len()
                )
                .map_err(io)?;
            }
            if !report.errors.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        SegmentCommand::Run {
            name,
            as_of,
            count,
            save,
            format,
        } => {
            let compiled =
                segments.compile(&name, parse_as_of(as_of.as_deref())?, Dialect::Datafusion)?;
            if save {
                let n = segments.save(ws, &compiled).await?;
                let report = serde_json::json!({
                    "segment": name, "as_of": compiled.as_of.to_rfc3339(),
                    "members": n, "table": "segment_members",
                });
                print_report(&report, format.format, out)?;
            } else if count {
                let n = segments.count(&compiled).await?;
                match format.format {
                    OutputFormat::Table => writeln!(out, "{n}").map_err(io)?,
                    f => print_report(&serde_json::json!({"segment": name, "members": n}), f, out)?,
                }
            } else {
                let frame = segments.members_frame(&compiled).await?;
                let stream = frame.execute_stream().await.map_err(tribe::Error::from)?;
                print_stream(stream, format.format, out).await?;
            }
        }
        SegmentCommand::Compile {
            name,
            as_of,
            dialect,
        } => {
            let compiled = segments.compile(&name, parse_as_of(as_of.as_deref())?, dialect)?;
            writeln!(out, "{};", compiled.members()).map_err(io)?;
        }
        SegmentCommand::Explain {
            name,
            as_of,
            format,
        } => {
            let compiled =
                segments.compile(&name, parse_as_of(as_of.as_deref())?, Dialect::Datafusion)?;
            let explain = segments.explain(&compiled).await?;
            match format.format {
                OutputFormat::Table => {
                    writeln!(
                        out,
                        "-- SQL\n{}\n\n-- logical plan\n{}\n\n-- physical plan\n{}",
                        explain.sql, explain.logical_plan, explain.physical_plan
                    )
                    .map_err(io)?;
                }
                f => print_report(&explain, f, out)?,
            }
        }
        SegmentCommand::Why {
            name,
            profile,
            as_of,
            format,
        } => {
            let compiled =
                segments.compile(&name, parse_as_of(as_of.as_deref())?, Dialect::Datafusion)?;
            let why = segments.why(ws, &compiled, &profile).await?;
            match format.format {
                OutputFormat::Table => {
                    let verdict = if why.member { "is" } else { "is not" };
                    writeln!(
                        out,
                        "{} {verdict} a member of {} as of {}",
                        why.profile_id, why.segment, why.as_of
                    )
                    .map_err(io)?;
                    print_rows(&why.conditions, OutputFormat::Table, out)?;
                }
                f => print_report(&why, f, out)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
