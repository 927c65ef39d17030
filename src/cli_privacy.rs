//! `tribe privacy …`: flags and printing for subject access, consent, erasure and the audit
//! log; the work is in `tribe::privacy`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use tribe::output::{OutputFormat, print_report, print_rows, print_stream};
use tribe::privacy::consent::Statement;
use tribe::privacy::log::Entry;
use tribe::privacy::{access, consent, forget, log, person, tombstone};
use tribe::{Error, Result, Workspace};

use crate::cli::{FormatArg, stdout_error as io, with_spinner};

#[derive(Subcommand)]
pub enum PrivacyCommand {
    /// Everything stored about a person, one section per table.
    Show {
        /// An e-mail, phone, user id, anonymous id, any identifier, or a profile id.
        identifier: String,
        /// Why (a ticket number); goes to the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// A portable copy of everything stored about a person, as one JSON document.
    Export {
        identifier: String,
        /// The JSON file to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Erase a person from every table, past export files and old table versions, and keep
    /// their identifiers out of future ingests. Run it again after a crash to finish.
    Forget {
        identifier: String,
        /// Why (a ticket number); goes to the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Record a consent decision for a channel; the latest decision per channel wins.
    Consent {
        identifier: String,
        /// The channel: email, sms, ads, analytics, ...
        #[arg(long)]
        channel: String,
        /// Consent given.
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        grant: bool,
        /// Consent refused or withdrawn.
        #[arg(long)]
        deny: bool,
        /// When the person decided (date or RFC 3339; default now).
        #[arg(long)]
        at: Option<String>,
        /// Where the decision was made (default `privacy`).
        #[arg(long, default_value = "privacy")]
        source: String,
        /// The identifier's type, for an identifier no profile has yet (email, phone, ...).
        #[arg(long = "type")]
        id_type: Option<String>,
        /// Only record it; the next `tribe resolve` applies it to the profile.
        #[arg(long)]
        no_resolve: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// The audit trail of privacy requests (also the SQL table `privacy_log`).
    Log {
        /// Only the requests about this identifier.
        #[arg(long)]
        identifier: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
}

pub async fn run(
    command: PrivacyCommand,
    cwd: &std::path::Path,
    open: impl Fn() -> Result<Workspace>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    match command {
        PrivacyCommand::Show {
            identifier,
            reason,
            format,
        } => {
            let ws = open()?;
            let found = with_spinner(
                "searching every table",
                access::gather(&ws, &identifier, "show", reason.as_deref()),
            )
            .await?;
            match format.format {
                OutputFormat::Json => print_report(&found, OutputFormat::Json, out)?,
                other => {
                    writeln!(
                        out,
                        "profile: {}",
                        found.profile_id.as_deref().unwrap_or("(none)")
                    )
                    .map_err(io)?;
                    for (table, rows) in &found.tables {
                        writeln!(out, "\n{table} ({} rows):", rows.len()).map_err(io)?;
                        print_rows(rows, other, out)?;
                    }
                    if found.tables.is_empty() {
                        writeln!(out, "nothing is stored about {identifier:?}").map_err(io)?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PrivacyCommand::Export {
            identifier,
            out: path,
            reason,
            format,
        } => {
            let ws = open()?;
            let path = cwd.join(path);
            let found = with_spinner(
                "searching every table",
                access::gather(&ws, &identifier, "export", reason.as_deref()),
            )
            .await?;
            let text =
                serde_json::to_vec_pretty(&found).map_err(|e| Error::Other(e.to_string()))?;
            // Written next to the target and renamed: a reader never sees half a document.
            let tmp = path.with_extension("json.partial");
            std::fs::write(&tmp, &text).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
            let summary = serde_json::json!({
                "request_id": found.request_id,
                "file": path.display().to_string(),
                "profile_id": found.profile_id,
                "tables": found.tables.len(),
                "rows": found.rows(),
                "bytes": text.len(),
            });
            print_report(&summary, format.format, out)?;
            Ok(ExitCode::SUCCESS)
        }
        PrivacyCommand::Forget {
            identifier,
            reason,
            format,
        } => {
            let ws = open()?;
            let report = with_spinner(
                "forgetting",
                forget::forget(&ws, &identifier, reason.as_deref()),
            )
            .await?;
            match format.format {
                OutputFormat::Table => {
                    let mut head = serde_json::to_value(&report).expect("serialises");
                    head.as_object_mut().map(|o| o.remove("tables"));
                    print_report(&head, OutputFormat::Table, out)?;
                    writeln!(out).map_err(io)?;
                    let touched: Vec<_> = report.tables.iter().filter(|t| t.touched()).collect();
                    print_rows(&touched, OutputFormat::Table, out)?;
                }
                other => print_report(&report, other, out)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        PrivacyCommand::Consent {
            identifier,
            channel,
            grant,
            deny: _,
            at,
            source,
            id_type,
            no_resolve,
            format,
        } => {
            let ws = open()?;
            let stated_at = match at {
                Some(a) => tribe::segment::parse_as_of(Some(&a))?.timestamp_micros(),
                None => chrono::Utc::now().timestamp_micros(),
            };
            let (id_type, id_value, profile_id) =
                consent_target(&ws, &identifier, id_type.as_deref()).await?;
            let statement = Statement {
                statement_id: log::request_id("consent"),
                id_type,
                id_value,
                channel,
                granted: grant,
                stated_at,
                source,
            };
            // A forgotten person's decision would bring them back as a profile: only a grant,
            // and only when the policy lets new consent override the erasure.
            let stones = tombstone::Tombstones::load(&ws).await?;
            let verdict = stones.check(
                &[(statement.id_type.as_str(), statement.id_value.as_str())],
                stated_at,
                grant,
            );
            if verdict == tombstone::Verdict::Suppress {
                return Err(Error::Input(format!(
                    "{identifier:?} belongs to a forgotten person: nothing is recorded \
                     (a grant dated after the erasure is, with [privacy] new_consent_overrides = true)"
                )));
            }
            consent::record(&ws, &statement).await?;
            stones.record_lifts(&ws).await?;
            let salt = tribe::privacy::salt(&ws).await?;
            log::append(
                &ws,
                &[Entry {
                    logged_at: chrono::Utc::now().timestamp_micros(),
                    request_id: statement.statement_id.clone(),
                    action: "consent".into(),
                    identifier_hash: tribe::privacy::hash_identifier(
                        &salt,
                        &statement.id_type,
                        &statement.id_value,
                    ),
                    reason: None,
                    outcome: format!(
                        "{} {}",
                        if grant { "granted" } else { "denied" },
                        statement.channel
                    ),
                    details: None,
                }],
            )
            .await?;
            if !no_resolve {
                with_spinner(
                    "applying to profiles",
                    tribe::identity::resolve(&ws, tribe::identity::Options::default()),
                )
                .await?;
            }
            let report = serde_json::json!({
                "statement_id": statement.statement_id,
                "profile_id": profile_id,
                "id_type": statement.id_type,
                "channel": statement.channel,
                "granted": statement.granted,
                "stated_at": chrono::DateTime::from_timestamp_micros(stated_at).map(|t| t.to_rfc3339()),
                "source": statement.source,
                "applied": !no_resolve,
            });
            print_report(&report, format.format, out)?;
            Ok(ExitCode::SUCCESS)
        }
        PrivacyCommand::Log { identifier, format } => {
            let ws = open()?;
            let (ctx, _) = tribe::sql::session(&ws).await?;
            if !ctx.table_exist(log::TABLE).unwrap_or(false) {
                print_rows::<serde_json::Value>(&[], format.format, out)?;
                return Ok(ExitCode::SUCCESS);
            }
            let hashes = match identifier {
                Some(key) => {
                    let salt = tribe::privacy::salt(&ws).await?;
                    let normalisers =
                        tribe::identity::normalize::Normalisers::new(&ws.config.identity)?;
                    Some(forget::key_hashes(&ws, &salt, &normalisers, &key))
                }
                None => None,
            };
            let stream = tribe::sql::run(&ctx, &log::query(hashes.as_deref())).await?;
            print_stream(stream, format.format, out).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The identifier a consent statement is about: the one `key` names among its profile's
/// identifiers (a profile id names its strongest), or `key` itself under `--type`.
async fn consent_target(
    ws: &Workspace,
    key: &str,
    id_type: Option<&str>,
) -> Result<(String, String, Option<String>)> {
    let normalisers = tribe::identity::normalize::Normalisers::new(&ws.config.identity)?;
    if let Some(t) = id_type {
        let v = normalisers
            .normalise(t, key)
            .map_err(|r| Error::Input(format!("{key:?} is not a valid {t}: {}", r.describe())))?;
        return Ok((t.to_string(), v, None));
    }
    let (ctx, _) = tribe::sql::session(ws).await?;
    let found = person::find(ws, &ctx, key).await?;
    let Some(pid) = found.profile_id.clone() else {
        return Err(Error::Input(format!(
            "no profile has the identifier {key:?}; name its type with --type email|phone|user_id|…"
        )));
    };
    let named = found.named(&normalisers, key);
    let priority = &ws.config.identity.priority;
    let strongest = found.identifiers.iter().min_by_key(|(t, _)| {
        priority
            .iter()
            .position(|p| p == t)
            .unwrap_or(priority.len())
    });
    let (t, v) = named.or(strongest).cloned().ok_or_else(|| {
        Error::Input(format!(
            "profile {pid} has no identifier to state consent for"
        ))
    })?;
    Ok((t, v, Some(pid)))
}
