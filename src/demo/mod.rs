//! `tribe demo`: a workspace with generated data from several sources, for trying tribe and for
//! benchmarks. People are simulated one at a time (visits, sign-ups, orders, e-mails, shop
//! purchases) and written as the raw files each source system would export: web and app events
//! as Segment JSON lines, e-mail engagement events, a CRM contacts CSV with the formatting noise
//! real exports have, and point-of-sale orders as Parquet. The files are then ingested with the
//! normal ingest path. `truth.csv` says which person each raw identifier belongs to.
//!
//! Everything is a function of the seed: a person's data comes from a generator seeded with
//! (seed, person), so output does not depend on thread count or scheduling.

mod person;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use indicatif::ProgressBar;
use parquet::arrow::ArrowWriter;
use rayon::prelude::*;
use serde::Serialize;

use crate::config::{Config, RecordEvent, RecordSource, ValueType};
use crate::error::{Error, Result};
use crate::ingest::IngestReport;
use crate::workspace::Workspace;
pub use person::Generated;

/// What to generate.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub people: u64,
    pub days: u32,
    pub seed: u64,
    /// Keep the generated source files under `sources/` (they are always written first).
    pub keep_sources: bool,
    /// Resolve identities after ingesting, score them against `truth.csv`, and compute traits.
    pub resolve: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            people: 1000,
            days: 365,
            seed: 42,
            keep_sources: true,
            resolve: true,
        }
    }
}

/// The as-of time of demo data: every seed's data ends just before it.
pub const AS_OF: &str = "2026-07-01T00:00:00Z";

/// What the demo built.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DemoReport {
    pub workspace: String,
    pub as_of: String,
    pub people: u64,
    pub days: u32,
    pub seed: u64,
    pub web_events: u64,
    pub app_events: u64,
    pub email_events: u64,
    pub crm_contacts: u64,
    pub pos_orders: u64,
    pub truth_rows: u64,
    pub ingested: Vec<IngestReport>,
    /// Profiles resolved, when the demo resolved identities.
    pub profiles: Option<u64>,
    pub known_profiles: Option<u64>,
    /// Pairwise precision and recall against `truth.csv`.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// An e-mail address as one source spelled it, for `tribe profile show`.
    pub example_identifier: Option<String>,
    /// Profiles with purchases, whose traits were computed as of the demo's as-of time.
    pub buyers: Option<u64>,
}

/// The demo workspace's config: CRM contacts and point-of-sale orders mapped as record sources.
pub fn demo_config(name: &str) -> Config {
    let mut config = Config::default();
    config.workspace.name = name.to_string();
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    config.records.insert(
        "crm".into(),
        RecordSource {
            identifiers: map(&[
                ("email", "email"),
                ("phone", "phone"),
                ("crm_id", "contact_id"),
                ("loyalty_id", "loyalty_id"),
            ]),
            traits: map(&[
                ("first_name", "first_name"),
                ("last_name", "last_name"),
                ("country", "country"),
                ("zip", "zip"),
            ]),
            consent: map(&[
                ("email", "email_opt_in"),
                ("sms", "sms_opt_in"),
                ("ads", "ads_opt_in"),
            ]),
            columns: [("created_at".to_string(), ValueType::Timestamp)].into(),
            event: None,
        },
    );
    config.records.insert(
        "pos".into(),
        RecordSource {
            identifiers: map(&[("email", "email"), ("loyalty_id", "loyalty_id")]),
            traits: Default::default(),
            consent: Default::default(),
            columns: [("total".to_string(), ValueType::Double)].into(),
            event: Some(RecordEvent {
                timestamp: "ordered_at".into(),
                name: Some("Order Completed".into()),
                name_column: None,
                message_id: Some("order_id".into()),
                properties: map(&[
                    ("revenue", "total"),
                    ("currency", "currency"),
                    ("order_id", "order_id"),
                    ("store_id", "store_id"),
                ]),
            }),
        },
    );
    config.identity.default_country = Some("DE".into());
    config.identity.consent = map(&[("email", "email_opt_in"), ("sms", "sms_opt_in")]);
    let model = |horizon_days, predict: &str| crate::config::PropensityModel {
        event: None,
        horizon_days,
        predict: predict.into(),
        l2: None,
    };
    config
        .traits
        .models
        .insert("churn_propensity".into(), model(90, "absent"));
    config
        .traits
        .models
        .insert("purchase_propensity_30d".into(), model(30, "occurs"));
    // `tribe serve` works out of the box; real workspaces keep secrets in the environment
    // ("env:NAME").
    config.serve.write_keys = map(&[("web", "demo-web-key"), ("app", "demo-app-key")]);
    config.serve.users = map(&[("analyst", "demo-analyst")]);
    config
}

/// The example segments of the repository's `queries/` folder, which a demo workspace gets.
pub const EXAMPLE_SEGMENTS: &[(&str, &str)] = &[
    ("events.seg", include_str!("../../queries/events.seg")),
    ("retention.seg", include_str!("../../queries/retention.seg")),
    (
        "engagement.seg",
        include_str!("../../queries/engagement.seg"),
    ),
];

fn write_examples(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, text) in EXAMPLE_SEGMENTS {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// The example exports of a demo workspace, as `exports/NAME.toml` files: the two ad platform
/// presets and a plain CSV into a local folder (`{outbox}` becomes the workspace's `outbox/`).
pub const EXAMPLE_EXPORTS: &[(&str, &str)] = &[
    (
        "vip_google",
        "# VIP customers to Google Ads Customer Match: hashed e-mail, phone and names, daily at 06:00\n\
         # Berlin time, only people who agreed to ads. Files go under the storage root.\n\
         segment = \"vip_by_spend\"\n\
         preset = \"google_customer_match\"\n\
         consent = \"ads\"\n\
         schedule = \"0 6 * * *\"\n\
         timezone = \"Europe/Berlin\"\n",
    ),
    (
        "churn_risk_meta",
        "# Valuable customers at risk of churning to a Meta custom audience, except the VIPs (who get\n\
         # their own campaign). Hashed as Meta asks; split into files of at most 10000 rows.\n\
         segment = \"high_value_churn_risk\"\n\
         preset = \"meta_custom_audience\"\n\
         consent = \"ads\"\n\
         suppress = \"vip_by_spend\"\n\
         max_rows_per_file = 10000\n\
         schedule = \"30 6 * * 1\"\n\
         timezone = \"Europe/Berlin\"\n",
    ),
    (
        "winback_email",
        "# At-risk customers who can be e-mailed, as a plain CSV for the e-mail tool, in a local folder.\n\
         segment = \"at_risk_winback\"\n\
         consent = \"email\"\n\
         columns = [\"profile_id\", \"email\", \"first_name\", \"rfm_segment\", { from = \"clv\", as = \"predicted_value\" }]\n\
         destination = \"{outbox}/{export}/{date}/{run}/\"\n",
    ),
];

fn write_exports(dir: &Path) -> Result<()> {
    let folder = dir.join("exports");
    std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    let outbox = dir.join("outbox");
    for (name, text) in EXAMPLE_EXPORTS {
        let path = folder.join(format!("{name}.toml"));
        let text = text.replace("{outbox}", &outbox.display().to_string());
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// People generated and written per step; bounds memory at any scale.
const PEOPLE_PER_STEP: u64 = 2000;

/// People whose source files are written and ingested together when sources are not kept.
const PEOPLE_PER_INGEST: u64 = 250_000;

/// Builds the demo workspace in `dir`.
pub async fn build(
    dir: &Path,
    options: &DemoOptions,
    progress: &ProgressBar,
) -> Result<DemoReport> {
    if dir.join(crate::config::CONFIG_FILE).exists() {
        return Err(Error::Input(format!(
            "{}: already holds a workspace; remove it or choose another folder",
            dir.display()
        )));
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("demo")
        .to_string();
    let ws = Workspace::init(dir, demo_config(&name))?;
    write_examples(&dir.join(&ws.config.segments.dir))?;
    write_exports(dir)?;
    let sources = dir.join("sources");

    let mut report = DemoReport {
        workspace: dir.display().to_string(),
        as_of: AS_OF.into(),
        people: options.people,
        days: options.days,
        seed: options.seed,
        web_events: 0,
        app_events: 0,
        email_events: 0,
        crm_contacts: 0,
        pos_orders: 0,
        truth_rows: 0,
        ingested: vec![],
        ..Default::default()
    };
    // Without kept sources, people are generated and ingested a chunk at a time, so the raw
    // files never take more disk than one chunk's (a million people's JSON is ~30 GB).
    let chunk = if options.keep_sources {
        options.people.max(1)
    } else {
        PEOPLE_PER_INGEST
    };
    let mut start = 0;
    while start < options.people {
        let people = start..(start + chunk).min(options.people);
        write_sources(
            &sources,
            dir,
            options,
            people.clone(),
            progress,
            &mut report,
        )?;
        progress.set_message("ingesting");
        ingest_sources(&ws, &sources, &mut report).await?;
        if !options.keep_sources {
            let _ = std::fs::remove_dir_all(&sources);
        }
        start = people.end;
    }
    if options.resolve {
        progress.set_message("resolving identities");
        let resolved = crate::identity::resolve(&ws, Default::default()).await?;
        report.profiles = Some(resolved.profiles);
        report.known_profiles = Some(resolved.known_profiles);
        let truth = dir.join("truth.csv");
        let scores = crate::identity::evaluate::evaluate(&ws, &truth).await?;
        report.precision = Some(scores.precision);
        report.recall = Some(scores.recall);
        report.example_identifier = example_email(&truth);
        progress.set_message("computing traits");
        let as_of = chrono::DateTime::parse_from_rfc3339(AS_OF)
            .expect("valid as-of")
            .with_timezone(&chrono::Utc);
        let traits = crate::traits::compute::compute(&ws, as_of).await?;
        report.buyers = Some(traits.buyers);
    }
    Ok(report)
}

/// Ingests the generated files of `sources` (each ingest adds its report).
async fn ingest_sources(ws: &Workspace, sources: &Path, report: &mut DemoReport) -> Result<()> {
    let quiet = ProgressBar::hidden();
    let events = vec![
        sources.join("web.jsonl"),
        sources.join("app.jsonl"),
        sources.join("email.jsonl"),
    ];
    report.ingested.push(
        crate::ingest::events::ingest_events(ws, &events, &Default::default(), &quiet).await?,
    );
    for (source, file) in [("crm", "crm_contacts.csv"), ("pos", "pos_orders.parquet")] {
        report.ingested.push(
            crate::ingest::records::ingest_records(
                ws,
                source,
                &[sources.join(file)],
                false,
                &quiet,
            )
            .await?,
        );
    }
    Ok(())
}

/// The first e-mail in the truth file spelled with capitals or spaces, else the first e-mail.
fn example_email(truth: &Path) -> Option<String> {
    let mut reader = csv::Reader::from_path(truth).ok()?;
    let emails: Vec<String> = reader
        .records()
        .filter_map(|r| r.ok())
        .filter(|r| &r[0] == "email")
        .map(|r| r[1].to_string())
        .take(200)
        .collect();
    emails
        .iter()
        .find(|e| e.chars().any(|c| c.is_ascii_uppercase()) && !e.contains(' '))
        .or(emails.first())
        .cloned()
}

/// Generates the raw source files of the people numbered `people` (of `options.people`) into
/// `sources` (and their rows of `truth.csv` into `root`, which the first person starts),
/// counting what was written into `report`.
pub fn write_sources(
    sources: &Path,
    root: &Path,
    options: &DemoOptions,
    people: std::ops::Range<u64>,
    progress: &ProgressBar,
    report: &mut DemoReport,
) -> Result<()> {
    std::fs::create_dir_all(sources).map_err(|e| Error::io(sources, e))?;
    let as_of = crate::ingest::message::parse_time(AS_OF).expect("valid constant");
    progress.set_length(options.people);
    progress.set_message("generating people");
    let mut files = SourceFiles::create(sources, root, people.start > 0)?;
    let mut start = people.start;
    while start < people.end {
        let end = (start + PEOPLE_PER_STEP).min(people.end);
        let generated: Vec<Generated> = (start..end)
            .into_par_iter()
            .map(|p| person::generate(options.seed, p, options.people, options.days, as_of))
            .collect();
        for g in &generated {
            files.write(g, report)?;
        }
        progress.inc(end - start);
        start = end;
    }
    files.finish()
}

/// The raw files being written.
struct SourceFiles {
    web: BufWriter<File>,
    app: BufWriter<File>,
    email: BufWriter<File>,
    crm: csv::Writer<BufWriter<File>>,
    truth: csv::Writer<BufWriter<File>>,
    pos: ArrowWriter<File>,
    pos_rows: Vec<person::PosOrder>,
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(
        1 << 20,
        File::create(path).map_err(|e| Error::io(path, e))?,
    ))
}

fn pos_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new(
            "ordered_at",
            crate::storage::schema::timestamp_type(),
            false,
        ),
        Field::new("store_id", DataType::Utf8, false),
        Field::new("email", DataType::Utf8, true),
        Field::new("loyalty_id", DataType::Utf8, true),
        Field::new("total", DataType::Float64, false),
        Field::new("currency", DataType::Utf8, false),
    ]))
}

impl SourceFiles {
    /// `more_truth`: append to the truth file of earlier people instead of starting it.
    fn create(sources: &Path, root: &Path, more_truth: bool) -> Result<SourceFiles> {
        let mut crm = csv::Writer::from_writer(create(&sources.join("crm_contacts.csv"))?);
        crm.write_record([
            "contact_id",
            "first_name",
            "last_name",
            "email",
            "phone",
            "country",
            "loyalty_id",
            "email_opt_in",
            "sms_opt_in",
            "ads_opt_in",
            "zip",
            "created_at",
        ])
        .map_err(csv_err)?;
        let truth_path = root.join("truth.csv");
        let truth = if more_truth {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .open(&truth_path)
                .map_err(|e| Error::io(&truth_path, e))?;
            csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file))
        } else {
            let mut w = csv::Writer::from_writer(create(&truth_path)?);
            w.write_record(["id_type", "id_value", "person_id"])
                .map_err(csv_err)?;
            w
        };
        let pos_path = sources.join("pos_orders.parquet");
        let pos_file = File::create(&pos_path).map_err(|e| Error::io(&pos_path, e))?;
        Ok(SourceFiles {
            web: create(&sources.join("web.jsonl"))?,
            app: create(&sources.join("app.jsonl"))?,
            email: create(&sources.join("email.jsonl"))?,
            crm,
            truth,
            pos: ArrowWriter::try_new(
                pos_file,
                pos_schema(),
                Some(crate::storage::writer_properties("pos")),
            )?,
            pos_rows: Vec::new(),
        })
    }

    fn write(&mut self, g: &Generated, report: &mut DemoReport) -> Result<()> {
        let io = |e| Error::io("demo sources", e);
        for line in &g.web {
            self.web.write_all(line.as_bytes()).map_err(io)?;
            self.web.write_all(b"\n").map_err(io)?;
        }
        for line in &g.app {
            self.app.write_all(line.as_bytes()).map_err(io)?;
            self.app.write_all(b"\n").map_err(io)?;
        }
        for line in &g.email {
            self.email.write_all(line.as_bytes()).map_err(io)?;
            self.email.write_all(b"\n").map_err(io)?;
        }
        report.web_events += g.web.len() as u64;
        report.app_events += g.app.len() as u64;
        report.email_events += g.email.len() as u64;
        if let Some(contact) = &g.crm {
            self.crm.write_record(contact).map_err(csv_err)?;
            report.crm_contacts += 1;
        }
        for (id_type, value) in &g.truth {
            self.truth
                .write_record([id_type.as_str(), value.as_str(), g.person_id.as_str()])
                .map_err(csv_err)?;
        }
        report.truth_rows += g.truth.len() as u64;
        report.pos_orders += g.pos.len() as u64;
        self.pos_rows.extend(g.pos.iter().cloned());
        if self.pos_rows.len() >= 65_536 {
            self.flush_pos()?;
        }
        Ok(())
    }

    fn flush_pos(&mut self) -> Result<()> {
        if self.pos_rows.is_empty() {
            return Ok(());
        }
        let mut id = StringBuilder::new();
        let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let mut store = StringBuilder::new();
        let mut email = StringBuilder::new();
        let mut loyalty = StringBuilder::new();
        let mut total = Float64Builder::new();
        let mut currency = StringBuilder::new();
        for o in self.pos_rows.drain(..) {
            id.append_value(&o.order_id);
            at.append_value(o.ordered_at);
            store.append_value(&o.store_id);
            email.append_option(o.email.as_deref());
            loyalty.append_option(o.loyalty_id.as_deref());
            total.append_value(o.total);
            currency.append_value(&o.currency);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(at.finish()),
            Arc::new(store.finish()),
            Arc::new(email.finish()),
            Arc::new(loyalty.finish()),
            Arc::new(total.finish()),
            Arc::new(currency.finish()),
        ];
        self.pos
            .write(&RecordBatch::try_new(pos_schema(), columns)?)?;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.flush_pos()?;
        let io = |e| Error::io("demo sources", e);
        self.web.flush().map_err(io)?;
        self.app.flush().map_err(io)?;
        self.email.flush().map_err(io)?;
        self.crm.flush().map_err(io)?;
        self.truth.flush().map_err(io)?;
        self.pos.close()?;
        Ok(())
    }
}

fn csv_err(e: csv::Error) -> Error {
    Error::Other(format!("writing demo CSV: {e}"))
}

/// Queries worth trying on a fresh demo workspace.
pub const TRY_QUERIES: &[&str] = &[
    "select profile_id, email, first_name, last_name, events, consent_email from profiles where is_known order by events desc limit 10",
    "select p.country, count(distinct e.profile_id) as buyers, round(sum(e.prop_revenue), 2) as revenue from profile_events e join profiles p using (profile_id) where e.event = 'Order Completed' group by 1 order by 3 desc",
    "select type, count(*) from events group by 1 order by 2 desc",
    "select event, count(*) as n, round(sum(prop_revenue), 2) as revenue from events where type = 'track' group by 1 order by 2 desc",
    "select source, min(timestamp), max(timestamp), count(*) from events group by 1",
    "select country, count(*) from crm group by 1 order by 2 desc",
    "select date_trunc('month', timestamp) as month, round(sum(prop_revenue), 2) as revenue from events where event = 'Order Completed' group by 1 order by 1",
    "select json_get_str(properties, 'path') as path, count(*) from events where type = 'page' group by 1 order by 2 desc limit 5",
];
