//! Command-line flags and the dispatch from subcommands to the library.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use tribe::config::{Config, find_workspace};
use tribe::ingest::{IngestReport, events::EventIngest};
use tribe::output::{OutputFormat, print_report, print_rows, print_stream};
use tribe::{Error, Result, Workspace};

#[derive(Parser)]
#[command(
    name = "tribe",
    version,
    about = "The analytical core of a customer data platform"
)]
#[command(
    long_about = "tribe ingests events and records into Delta Lake tables on object \
storage, resolves them into profiles, and answers SQL over all of it.\n\nCommands run in a \
workspace: the folder given by --workspace, else $TRIBE_WORKSPACE, else the nearest folder \
upward from here that holds a tribe.toml."
)]
struct Cli {
    /// Workspace folder (holds tribe.toml).
    #[arg(long, global = true, env = "TRIBE_WORKSPACE", value_name = "DIR")]
    workspace: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a workspace: write tribe.toml.
    Init {
        /// Folder of the new workspace (default: the current folder).
        dir: Option<PathBuf>,
        /// Storage root: a folder relative to the workspace, or s3://, gs://, az:// URL.
        #[arg(long, value_name = "URL", default_value = "data")]
        storage: String,
        /// Workspace name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Run SQL over every table of the workspace; without a query, an interactive shell.
    Sql {
        /// The SQL statement. Omit it for an interactive shell with history.
        query: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Load events or records into the workspace.
    #[command(subcommand)]
    Ingest(IngestCommand),
    /// Build a demo workspace with generated data from several sources.
    Demo {
        /// Folder of the demo workspace.
        #[arg(default_value = "demo")]
        dir: PathBuf,
        /// People to simulate.
        #[arg(long, default_value_t = 1000)]
        people: u64,
        /// Days of history before the as-of time.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Random seed; the same seed builds the same data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Delete the generated source files after ingesting them.
        #[arg(long)]
        no_sources: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Compact small files and delete files no longer needed (optimize + vacuum).
    Maintain {
        /// Only this table (repeatable; default: all).
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Keep unreferenced files younger than this many hours (default: tribe.toml's
        /// vacuum_retention_hours, 168).
        #[arg(long)]
        retention_hours: Option<u64>,
        /// Only vacuum, do not compact.
        #[arg(long)]
        vacuum_only: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Resolve identities into unified profiles (incremental unless --full).
    Resolve {
        /// Re-read all events and records, not only what is new since the last run.
        #[arg(long)]
        full: bool,
        /// After resolving (or instead, with --no-run), score the profiles against a ground
        /// truth CSV (id_type,id_value,person_id), such as a demo's truth.csv.
        #[arg(long, value_name = "TRUTH")]
        evaluate: Option<PathBuf>,
        /// With --evaluate: only score the current profiles, do not resolve first.
        #[arg(long, requires = "evaluate")]
        no_run: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Look at profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Segments: list, check, run, compile, explain, and why a profile is a member.
    #[command(subcommand)]
    Segment(crate::cli_segment::SegmentCommand),
    /// Computed traits: RFM, purchase models (BG/NBD, Gamma-Gamma), propensity scores.
    #[command(subcommand)]
    Traits(crate::cli_traits::TraitsCommand),
    /// Audience exports: run one now, list them, see their runs.
    #[command(subcommand)]
    Export(crate::cli_export::ExportCommand),
    /// Scheduled exports: run what is due.
    #[command(subcommand)]
    Schedule(crate::cli_export::ScheduleCommand),
    /// Privacy requests: what is stored about a person, a portable copy, consent decisions,
    /// erasure, and the audit log of all of them.
    #[command(subcommand)]
    Privacy(crate::cli_privacy::PrivacyCommand),
    /// Long-running services: the Segment-compatible collector, the Postgres-protocol SQL
    /// endpoint and the export scheduler. SIGTERM or Ctrl-C stops them gracefully.
    Serve {
        /// Run the event collector (HTTP); ADDR defaults to [serve] collector (127.0.0.1:8088).
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
        collector: Option<String>,
        /// Run the SQL endpoint (Postgres protocol); ADDR defaults to [serve] pg (127.0.0.1:5433).
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
        pg: Option<String>,
        /// Run exports on their schedules; each run is printed as a JSON line on stdout.
        #[arg(long)]
        scheduler: bool,
        /// Log format on stderr (RUST_LOG filters, default warn,tribe=info).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// List the tables of the workspace with their versions and file counts.
    Tables {
        #[command(flatten)]
        format: FormatArg,
    },
}

/// How `tribe serve` writes its logs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// One profile: its fields, identifiers, consent and recent events.
    Show {
        /// A profile id, or any identifier of it (user id, e-mail, phone, anonymous id, ...).
        key: String,
        /// How many recent events to list.
        #[arg(long, default_value_t = 10)]
        events: usize,
        #[command(flatten)]
        format: FormatArg,
    },
}

#[derive(Subcommand)]
enum IngestCommand {
    /// Segment-spec messages from JSON lines, CSV or Parquet files into `events`.
    Events {
        /// Input files (.jsonl, .ndjson, .json, .csv, .parquet).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Source name recorded on each event (default: the file name without extension).
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        common: IngestArgs,
    },
    /// Rows of a record source configured under [records.NAME] in tribe.toml.
    Records {
        /// The record source, as named in tribe.toml.
        #[arg(long, required = true)]
        source: String,
        /// Input files (.csv, .jsonl, .parquet).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        common: IngestArgs,
    },
}

#[derive(Args)]
struct IngestArgs {
    /// Fail the whole ingest, committing nothing, if any row is rejected.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    format: FormatArg,
}

#[derive(Args, Clone, Copy)]
pub struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

/// Runs the command line; the process exit code: 0 success, 1 nothing accepted, 2 error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let open = || -> Result<Workspace> {
        let dir = find_workspace(cli.workspace.as_deref(), None, &cwd)?;
        Workspace::open(&dir)
    };
    // Serving writes scheduled runs to stdout from another task: it must not find stdout locked.
    if let Command::Serve {
        collector,
        pg,
        scheduler,
        log_format,
    } = cli.command
    {
        return crate::cli_serve::serve(open()?, collector, pg, scheduler, log_format).await;
    }
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Init { dir, storage, name } => {
            let dir = dir.map_or_else(|| cwd.clone(), |d| cwd.join(d));
            let mut config = Config::default();
            config.workspace.storage = storage;
            config.workspace.name = name.unwrap_or_else(|| default_name(&dir));
            let ws = Workspace::init(&dir, config)?;
            writeln!(
                out,
                "created workspace {} (storage {})",
                ws.dir.display(),
                ws.storage.root()
            )
            .map_err(stdout_error)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sql { query, format } => {
            let ws = open()?;
            match query {
                Some(q) => {
                    let (ctx, _) = tribe::sql::session(&ws).await?;
                    let stream = tribe::sql::run(&ctx, &q).await?;
                    print_stream(stream, format.format, &mut out).await?;
                }
                None => {
                    let (ctx, _) = tribe::sql::session_for_many_queries(&ws).await?;
                    shell(&ctx, &ws, format.format).await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            people,
            days,
            seed,
            no_sources,
            format,
        } => {
            let dir = cwd.join(dir);
            let progress = count_progress("people");
            let options = tribe::demo::DemoOptions {
                people,
                days,
                seed,
                keep_sources: !no_sources,
                resolve: true,
            };
            let report = tribe::demo::build(&dir, &options, &progress).await;
            progress.finish_and_clear();
            let report = report?;
            if format.format == OutputFormat::Table {
                print_demo(&report, &mut out).map_err(stdout_error)?;
            } else {
                print_report(&report, format.format, &mut out)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Maintain {
            tables,
            retention_hours,
            vacuum_only,
            format,
        } => {
            let ws = open()?;
            let options = tribe::maintain::MaintainOptions {
                tables,
                retention_hours,
                vacuum_only,
            };
            let reports = tribe::maintain::maintain(&ws, &options).await?;
            print_rows(&reports, format.format, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Resolve {
            full,
            evaluate,
            no_run,
            format,
        } => {
            let ws = open()?;
            let report = if no_run {
                None
            } else {
                Some(
                    with_spinner(
                        "resolving identities",
                        tribe::identity::resolve(&ws, tribe::identity::Options { full }),
                    )
                    .await?,
                )
            };
            let truth = evaluate.map(|t| cwd.join(t));
            let scores = match &truth {
                Some(t) => Some(tribe::identity::evaluate::evaluate(&ws, t).await?),
                None => None,
            };
            match (report, scores) {
                // One JSON document for both.
                (Some(r), Some(e)) if format.format == OutputFormat::Json => {
                    let both = serde_json::json!({"resolve": r, "evaluation": e});
                    print_report(&both, format.format, &mut out)?;
                }
                (report, scores) => {
                    if let Some(r) = &report {
                        print_report(r, format.format, &mut out)?;
                    }
                    if let (Some(e), Some(t)) = (scores, &truth) {
                        if format.format == OutputFormat::Table && report.is_some() {
                            writeln!(out, "\nagainst {}:", t.display()).map_err(stdout_error)?;
                        }
                        print_report(&e, format.format, &mut out)?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Profile(ProfileCommand::Show {
            key,
            events,
            format,
        }) => {
            let ws = open()?;
            let view = tribe::identity::show::show(&ws, &key, events).await?;
            match format.format {
                OutputFormat::Table => {
                    print_report(&view.profile, OutputFormat::Table, &mut out)?;
                    let io = stdout_error;
                    writeln!(out, "\nidentifiers:").map_err(io)?;
                    print_rows(&view.identifiers, OutputFormat::Table, &mut out)?;
                    writeln!(out, "\nrecent events:").map_err(io)?;
                    print_rows(&view.recent_events, OutputFormat::Table, &mut out)?;
                }
                other => print_report(&view, other, &mut out)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Traits(command) => crate::cli_traits::run(command, &cwd, open, &mut out).await,
        Command::Export(command) => crate::cli_export::export(command, open, &mut out).await,
        Command::Privacy(command) => crate::cli_privacy::run(command, &cwd, open, &mut out).await,
        Command::Schedule(command) => crate::cli_export::schedule(command, open, &mut out).await,
        Command::Serve { .. } => unreachable!("handled above"),
        Command::Segment(command) => {
            let ws = open()?;
            crate::cli_segment::run(&ws, command, &mut out).await
        }
        Command::Tables { format } => {
            let ws = open()?;
            let (_, tables) = tribe::sql::session(&ws).await?;
            print_rows(&tables, format.format, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest(IngestCommand::Events {
            files,
            source,
            common,
        }) => {
            let ws = open()?;
            let progress = bytes_progress(&files, "ingesting events");
            let options = EventIngest {
                source,
                strict: common.strict,
            };
            let report =
                tribe::ingest::events::ingest_events(&ws, &files, &options, &progress).await;
            progress.finish_and_clear();
            finish_ingest(report?, common.format.format, &mut out)
        }
        Command::Ingest(IngestCommand::Records {
            source,
            files,
            common,
        }) => {
            let ws = open()?;
            let progress = bytes_progress(&files, "ingesting records");
            let report = tribe::ingest::records::ingest_records(
                &ws,
                &source,
                &files,
                common.strict,
                &progress,
            )
            .await;
            progress.finish_and_clear();
            finish_ingest(report?, common.format.format, &mut out)
        }
    }
}

/// Prints an ingest report; exit code 1 when nothing was accepted.
fn finish_ingest(
    report: IngestReport,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    print_report(&report, format, out)?;
    // Rows of forgotten people are refused on purpose: that is not a failed ingest.
    if report.accepted == 0 && report.suppressed == 0 {
        eprintln!("error: nothing was accepted ({} rejected)", report.rejected);
        return Ok(ExitCode::from(1));
    }
    if report.suppressed > 0 && format == OutputFormat::Table {
        eprintln!(
            "note: {} row(s) of forgotten people were not stored (see tribe privacy log)",
            report.suppressed
        );
    }
    if report.rejected > 0 && format == OutputFormat::Table {
        eprintln!(
            "warning: {} row(s) rejected; see them with: tribe sql \"select * from rejected\"",
            report.rejected
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar over the total size of `files`, drawn only on a terminal.
fn bytes_progress(files: &[PathBuf], message: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// A spinner for a long step, drawn only on a terminal.
/// Awaits `work` with a spinner on a terminal, cleared when it ends (with or without error).
pub async fn with_spinner<T>(
    message: &'static str,
    work: impl std::future::Future<Output = T>,
) -> T {
    let bar = spinner(message);
    let out = work.await;
    bar.finish_and_clear();
    out
}

/// An error writing a command's output.
pub fn stdout_error(e: std::io::Error) -> Error {
    Error::io("<stdout>", e)
}

pub fn spinner(message: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// A progress bar over a count, drawn only on a terminal.
fn count_progress(unit: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

fn print_demo(r: &tribe::demo::DemoReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "built demo workspace {}", r.workspace)?;
    writeln!(
        out,
        "  as-of time : {} (seed {}, {} people, {} days of history)",
        r.as_of, r.seed, r.people, r.days
    )?;
    writeln!(out, "  web events : {}", r.web_events)?;
    writeln!(out, "  app events : {}", r.app_events)?;
    writeln!(out, "  e-mail     : {}", r.email_events)?;
    writeln!(out, "  CRM        : {} contacts", r.crm_contacts)?;
    writeln!(out, "  shop (POS) : {} orders", r.pos_orders)?;
    writeln!(
        out,
        "  truth.csv  : {} identifiers with their true person",
        r.truth_rows
    )?;
    for i in &r.ingested {
        writeln!(
            out,
            "  table {:<8}: {} rows stored{}, {} rejected",
            i.table,
            i.inserted,
            if i.events_inserted > 0 {
                format!(" (+{} events)", i.events_inserted)
            } else {
                String::new()
            },
            i.rejected
        )?;
    }
    if let (Some(p), Some(k)) = (r.profiles, r.known_profiles) {
        writeln!(out, "  profiles   : {p} ({k} with a known identifier)")?;
    }
    if let (Some(precision), Some(recall)) = (r.precision, r.recall) {
        writeln!(
            out,
            "  identity resolution against truth.csv: precision {precision:.4}, recall {recall:.4}"
        )?;
    }
    if let Some(b) = r.buyers {
        writeln!(
            out,
            "  traits     : computed for {b} buyers (RFM, p_alive, CLV) and churn and purchase propensity for every profile"
        )?;
    }
    writeln!(out, "\ntry:")?;
    writeln!(out, "  cd {}", r.workspace)?;
    if let Some(id) = &r.example_identifier {
        writeln!(out, "  tribe profile show '{id}'")?;
    }
    let as_of = &tribe::demo::AS_OF[..10];
    writeln!(out, "  tribe segment list")?;
    if r.buyers.is_some() {
        writeln!(out, "  tribe traits report")?;
        writeln!(
            out,
            "  tribe sql \"select profile_id, round(clv, 2) as clv, round(p_alive, 3) as p_alive, round(churn_propensity, 3) as churn from traits order by clv desc nulls last limit 10\""
        )?;
    }
    writeln!(
        out,
        "  tribe segment run lapsed_loyalists --as-of {as_of} --count"
    )?;
    writeln!(
        out,
        "  tribe segment compile abandoned_carts --as-of {as_of} --dialect duckdb"
    )?;
    writeln!(out, "  tribe export list")?;
    writeln!(out, "  tribe export run vip_google --as-of {as_of}")?;
    writeln!(
        out,
        "  tribe serve --collector --pg    # then: PGPASSWORD=demo-analyst psql \"host=127.0.0.1 port=5433 user=analyst dbname=tribe\""
    )?;
    if let Some(id) = &r.example_identifier {
        writeln!(
            out,
            "  tribe segment why vip_by_spend '{id}' --as-of {as_of}"
        )?;
    }
    for q in tribe::demo::TRY_QUERIES {
        writeln!(out, "  tribe sql \"{q}\"")?;
    }
    Ok(())
}

fn default_name(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("tribe")
        .to_string()
}

/// The interactive SQL shell: statements end with `;`, history is kept in the workspace.
async fn shell(
    ctx: &datafusion::prelude::SessionContext,
    ws: &Workspace,
    format: OutputFormat,
) -> Result<()> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new().map_err(|e| Error::Other(e.to_string()))?;
    let history = ws.dir.join(".tribe_history");
    let _ = editor.load_history(&history);
    eprintln!(
        "tribe sql on {}: end statements with ;  .tables lists tables  .quit leaves",
        ws.dir.display()
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "tribe> "
        } else {
            "   ..> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() && matches!(trimmed, ".quit" | ".exit" | "\\q") {
                    break;
                }
                if buffer.is_empty() && trimmed == ".tables" {
                    buffer = "show tables".into();
                } else {
                    buffer.push_str(&line);
                    buffer.push('\n');
                    if !trimmed.ends_with(';') {
                        continue;
                    }
                }
                let statement = std::mem::take(&mut buffer);
                let _ = editor.add_history_entry(statement.trim());
                let mut out = std::io::stdout().lock();
                match tribe::sql::run(ctx, statement.trim().trim_end_matches(';')).await {
                    Ok(stream) => {
                        if let Err(e) = print_stream(stream, format, &mut out).await {
                            eprintln!("error: {e}");
                        }
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Error::Other(e.to_string())),
        }
    }
    let _ = editor.save_history(&history);
    Ok(())
}
