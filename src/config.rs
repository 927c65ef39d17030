//! The workspace configuration, `tribe.toml`: where the data lives, which event properties get
//! typed columns, and how each record source maps onto identifiers, traits, consent and events.
//! It also finds the workspace a command runs in. It does not open storage (see `storage`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file name that marks a workspace folder.
pub const CONFIG_FILE: &str = "tribe.toml";

/// The parsed `tribe.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub workspace: WorkspaceSection,
    #[serde(default)]
    pub events: EventsSection,
    /// Record sources by name (`crm`, `pos`, ...).
    #[serde(default)]
    pub records: BTreeMap<String, RecordSource>,
    /// How identifiers are normalised, guarded and merged into profiles.
    #[serde(default)]
    pub identity: IdentitySection,
    /// Where segment definitions live and what they may name.
    #[serde(default)]
    pub segments: SegmentsSection,
    /// Computed traits: what a purchase is, units and value settings.
    #[serde(default)]
    pub traits: TraitsSection,
    /// Audience exports by name (more in `exports/*.toml`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exports: BTreeMap<String, crate::export::ExportConfig>,
    /// `tribe serve`: addresses, write keys, SQL users, TLS, the collector's log.
    #[serde(default)]
    pub serve: crate::serve::ServeConfig,
    /// Privacy requests: what a forgotten person's new consent does.
    #[serde(default)]
    pub privacy: PrivacySection,
}

/// `[privacy]`: the policy of erasures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    /// Whether a forgotten person's message or record that grants consent, dated after the
    /// erasure, is kept and lifts the tombstone of its identifiers (default: never; the
    /// person stays forgotten).
    #[serde(default)]
    pub new_consent_overrides: bool,
}

/// `[traits]`: how computed traits read purchases.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraitsSection {
    /// The event that is a purchase.
    #[serde(default = "default_purchase_event")]
    pub purchase_event: String,
    /// The typed property holding its value.
    #[serde(default = "default_revenue_property")]
    pub revenue_property: String,
    /// Only purchases in this currency count (others are skipped and reported); none: all.
    #[serde(default)]
    pub currency: Option<String>,
    /// Time unit of the purchase models: "days" or "weeks".
    #[serde(default = "default_unit")]
    pub unit: String,
    /// Horizon of `expected_purchases`, in days.
    #[serde(default = "default_horizon")]
    pub horizon_days: u32,
    /// Months of customer lifetime value.
    #[serde(default = "default_clv_months")]
    pub clv_months: u32,
    /// Discount rate per month for customer lifetime value.
    #[serde(default = "default_discount")]
    pub monthly_discount_rate: f64,
    /// Propensity models, by the name of the trait they produce.
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, PropensityModel>,
}

/// `[traits.models.<name>]`: a propensity score, the probability that `event` happens (or,
/// with `predict = "absent"`, does not happen) in the next `horizon_days`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropensityModel {
    /// The event predicted (default: the purchase event).
    #[serde(default)]
    pub event: Option<String>,
    pub horizon_days: u32,
    /// "occurs" (default) or "absent".
    #[serde(default = "default_predict")]
    pub predict: String,
    /// L2 penalty on the mean log-loss (default 1 / training rows, scikit-learn's C = 1).
    #[serde(default)]
    pub l2: Option<f64>,
}

fn default_predict() -> String {
    "occurs".into()
}

impl Default for TraitsSection {
    fn default() -> Self {
        TraitsSection {
            purchase_event: default_purchase_event(),
            revenue_property: default_revenue_property(),
            currency: None,
            unit: default_unit(),
            horizon_days: default_horizon(),
            clv_months: default_clv_months(),
            monthly_discount_rate: default_discount(),
            models: Default::default(),
        }
    }
}

fn default_purchase_event() -> String {
    "Order Completed".into()
}
fn default_revenue_property() -> String {
    "revenue".into()
}
fn default_unit() -> String {
    "days".into()
}
fn default_horizon() -> u32 {
    90
}
fn default_clv_months() -> u32 {
    12
}
fn default_discount() -> f64 {
    0.01
}

/// `[segments]`: the segment language's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsSection {
    /// Folder of the `.seg` files, relative to the workspace.
    #[serde(default = "default_segments_dir")]
    pub dir: String,
    /// Event names segments may use before any such event has arrived (a new event being
    /// launched); names found in the data are always allowed.
    #[serde(default)]
    pub events: Vec<String>,
}

impl Default for SegmentsSection {
    fn default() -> Self {
        SegmentsSection {
            dir: default_segments_dir(),
            events: Vec::new(),
        }
    }
}

fn default_segments_dir() -> String {
    "queries".into()
}

/// `[identity]`: identity resolution rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// Country (ISO 3166 code such as `DE`) assumed for phone numbers written without one.
    #[serde(default)]
    pub default_country: Option<String>,
    /// Identifier types from strongest to weakest. When a limit forces a choice, links that
    /// involve weaker types are the ones not made. Types not listed come after all listed ones.
    #[serde(default = "default_priority")]
    pub priority: Vec<String>,
    /// Most identifiers of a type one profile may hold (`user_id = 1`, `email = 5`).
    #[serde(default = "default_limits")]
    pub limits: BTreeMap<String, u32>,
    /// Values never linked, as regular expressions matched against the normalised value,
    /// per type; `"*"` applies to every type. Added to the built-in list of junk values.
    #[serde(default)]
    pub blocked: BTreeMap<String, Vec<String>>,
    /// Set to false to drop the built-in blocked values (`test@test.com`, `null`, ...).
    #[serde(default = "yes")]
    pub default_blocks: bool,
    /// Normaliser per type: email, phone, trim, lower, upper, digits or none. Types not listed:
    /// email and phone by their names, trim for everything else.
    #[serde(default)]
    pub normalise: BTreeMap<String, Normaliser>,
    /// Trait keys of identify traits and `context.traits` that are identifiers.
    #[serde(default = "default_trait_identifiers")]
    pub trait_identifiers: Vec<String>,
    /// Event trait keys that carry consent: `channel = "trait"` (records use their own mapping).
    #[serde(default)]
    pub consent: BTreeMap<String, String>,
    /// Merge rule per trait; `latest` (non-null, by event time) for traits not listed.
    #[serde(default)]
    pub traits: BTreeMap<String, MergeRule>,
    /// Profiles with more identifiers than this are reported after each run.
    #[serde(default = "default_large_profile")]
    pub large_profile: usize,
}

impl Default for IdentitySection {
    fn default() -> Self {
        IdentitySection {
            default_country: None,
            priority: default_priority(),
            limits: default_limits(),
            blocked: BTreeMap::new(),
            default_blocks: true,
            normalise: BTreeMap::new(),
            trait_identifiers: default_trait_identifiers(),
            consent: BTreeMap::new(),
            traits: BTreeMap::new(),
            large_profile: default_large_profile(),
        }
    }
}

fn default_priority() -> Vec<String> {
    [
        "user_id",
        "email",
        "phone",
        "crm_id",
        "loyalty_id",
        "anonymous_id",
    ]
    .map(String::from)
    .to_vec()
}
fn default_limits() -> BTreeMap<String, u32> {
    [
        ("user_id".to_string(), 1),
        ("email".to_string(), 5),
        ("phone".to_string(), 5),
    ]
    .into()
}
fn default_trait_identifiers() -> Vec<String> {
    vec!["email".into(), "phone".into()]
}
fn default_large_profile() -> usize {
    100
}
fn yes() -> bool {
    true
}

/// How raw identifier values are made comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normaliser {
    /// Trimmed and lower-cased; must look like `local@domain`.
    Email,
    /// E.164 (`+4915112345678`), using `default_country` for national numbers.
    Phone,
    Trim,
    Lower,
    Upper,
    /// Only the digits.
    Digits,
    /// Exactly as sent.
    None,
}

/// How one trait's value is chosen among a profile's observations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MergeRule {
    Simple(SimpleRule),
    /// The latest value from the first source in this list that has one; other sources after.
    Sources {
        sources: Vec<String>,
    },
}

/// The merge rules that need no parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimpleRule {
    Latest,
    First,
    MostFrequent,
}

/// `[workspace]`: name and storage root.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSection {
    #[serde(default = "default_name")]
    pub name: String,
    /// Storage root: a folder (relative to the workspace) or an `s3://`, `gs://`, `az://` URL.
    #[serde(default = "default_storage")]
    pub storage: String,
    /// Memory the query engine may use before it spills to disk, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_limit_mb: usize,
    /// How long `tribe maintain` keeps files that are no longer part of a table, in hours.
    #[serde(default = "default_retention_hours")]
    pub vacuum_retention_hours: u64,
}

impl Default for WorkspaceSection {
    fn default() -> Self {
        WorkspaceSection {
            name: default_name(),
            storage: default_storage(),
            memory_limit_mb: default_memory_mb(),
            vacuum_retention_hours: default_retention_hours(),
        }
    }
}

fn default_name() -> String {
    "tribe".into()
}
fn default_storage() -> String {
    "data".into()
}
fn default_memory_mb() -> usize {
    4096
}
fn default_retention_hours() -> u64 {
    168
}

/// `[events]`: properties that get typed columns (`prop_<name>`) besides the JSON text.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// Extra typed properties, `name = "double"`; added to the Segment e-commerce defaults.
    #[serde(default)]
    pub properties: BTreeMap<String, ValueType>,
    /// Largest accepted message in bytes (Segment's limit is 32 KB).
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
}

/// A column or property type as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    String,
    Double,
    Long,
    Boolean,
    Timestamp,
}

impl ValueType {
    /// The Arrow type a column of this type is stored as.
    pub fn arrow(self) -> arrow::datatypes::DataType {
        use arrow::datatypes::{DataType, TimeUnit};
        match self {
            ValueType::String => DataType::Utf8,
            ValueType::Double => DataType::Float64,
            ValueType::Long => DataType::Int64,
            ValueType::Boolean => DataType::Boolean,
            ValueType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

impl ValueType {
    /// The config type of a stored column (text for anything else).
    pub fn from_arrow(ty: &arrow::datatypes::DataType) -> ValueType {
        use arrow::datatypes::DataType;
        match ty {
            DataType::Float64 | DataType::Float32 => ValueType::Double,
            DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8 => ValueType::Long,
            DataType::Boolean => ValueType::Boolean,
            DataType::Timestamp(_, _) => ValueType::Timestamp,
            _ => ValueType::String,
        }
    }
}

/// `[records.NAME]`: how the rows of one source system are read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSource {
    /// Identifier columns: `id_type = "column"` (email, phone, crm_id, loyalty_id, ...).
    #[serde(default)]
    pub identifiers: BTreeMap<String, String>,
    /// Trait columns: `trait = "column"`.
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
    /// Consent columns: `channel = "column"` (true/false, yes/no, 1/0).
    #[serde(default)]
    pub consent: BTreeMap<String, String>,
    /// Column types; columns not listed are stored as text.
    #[serde(default)]
    pub columns: BTreeMap<String, ValueType>,
    /// When set, every row is also an event.
    #[serde(default)]
    pub event: Option<RecordEvent>,
}

/// `[records.NAME.event]`: turns each row of a record source into an event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordEvent {
    /// Column with the event time.
    pub timestamp: String,
    /// Fixed event name (`Order Completed`), unless `name_column` is set.
    #[serde(default)]
    pub name: Option<String>,
    /// Column holding the event name.
    #[serde(default)]
    pub name_column: Option<String>,
    /// Column that identifies the row (an order id); it makes re-ingesting idempotent.
    /// Without it the row's content identifies it.
    #[serde(default)]
    pub message_id: Option<String>,
    /// Event properties: `property = "column"`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Config {
    /// Reads and checks `tribe.toml`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: one_line(&e),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        if self.traits.unit != "days" && self.traits.unit != "weeks" {
            return Err(bad(format!(
                "[traits] unit: {:?} is not \"days\" or \"weeks\"",
                self.traits.unit
            )));
        }
        for (name, model) in &self.traits.models {
            let built_in = crate::traits::compute::built_in_columns();
            if !is_identifier(name) || built_in.contains(name) {
                return Err(bad(format!(
                    "[traits.models.{name}]: model names are letters, digits and _, and not one of the built-in traits ({})",
                    built_in.join(", ")
                )));
            }
            if model.predict != "occurs" && model.predict != "absent" {
                return Err(bad(format!(
                    "[traits.models.{name}] predict: {:?} is not \"occurs\" or \"absent\"",
                    model.predict
                )));
            }
            if model.horizon_days == 0 {
                return Err(bad(format!(
                    "[traits.models.{name}] horizon_days: must be at least 1"
                )));
            }
        }
        self.serve.validate().map_err(bad)?;
        for (name, export) in &self.exports {
            export
                .validate(name)
                .map_err(|m| bad(format!("[exports.{name}] {m}")))?;
        }
        for name in self.events.properties.keys() {
            // Nested properties are named by their path: `product.sku`.
            if !name.split('.').all(is_identifier) {
                return Err(bad(format!(
                    "[events.properties]: {name:?} is not a valid property name (letters, digits, _; `.` between the parts of a nested one)"
                )));
            }
        }
        for (name, source) in &self.records {
            if !is_identifier(name) {
                return Err(bad(format!(
                    "[records.{name}]: source names are letters, digits and _"
                )));
            }
            if crate::storage::schema::RESERVED_TABLES.contains(&name.as_str()) {
                return Err(bad(format!(
                    "[records.{name}]: `{name}` is the name of one of tribe's own tables; pick another"
                )));
            }
            if let Some(event) = &source.event
                && event.name.is_none() == event.name_column.is_none()
            {
                return Err(bad(format!(
                    "[records.{name}.event]: set exactly one of `name` and `name_column`"
                )));
            }
        }
        let identity = &self.identity;
        for (ty, patterns) in &identity.blocked {
            for pattern in patterns {
                if let Err(e) = regex::Regex::new(pattern) {
                    return Err(bad(format!(
                        "[identity.blocked] {ty}: {pattern:?} is not a valid regular expression: {e}"
                    )));
                }
            }
        }
        if let Some(country) = &identity.default_country
            && country.parse::<phonenumber::country::Id>().is_err()
        {
            return Err(bad(format!(
                "[identity] default_country: {country:?} is not a country code such as \"DE\" or \"US\""
            )));
        }
        Ok(())
    }

    /// The config text, as written to `tribe.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// A TOML error as one line with its position.
pub(crate) fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg,
    }
}

/// Whether `name` is a plain name usable as a column or table name.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Finds the workspace folder: the flag, else `TRIBE_WORKSPACE`, else the nearest folder holding
/// `tribe.toml` from `cwd` upward.
pub fn find_workspace(flag: Option<&Path>, env: Option<&Path>, cwd: &Path) -> Result<PathBuf> {
    if let Some(dir) = flag.or(env) {
        let dir = cwd.join(dir);
        if dir.join(CONFIG_FILE).is_file() {
            return Ok(dir);
        }
        return Err(Error::Config {
            path: dir.join(CONFIG_FILE),
            message: "not found: this folder is not a tribe workspace (run `tribe init` there)"
                .into(),
        });
    }
    cwd.ancestors()
        .find(|dir| dir.join(CONFIG_FILE).is_file())
        .map(Path::to_path_buf)
        .ok_or(Error::NoWorkspace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let text = r#"
            [workspace]
            name = "shop"
            storage = "s3://bucket/prefix"
            [events.properties]
            basket_size = "long"
            [records.pos]
            identifiers = { email = "email", loyalty_id = "card" }
            columns = { total = "double" }
            [records.pos.event]
            timestamp = "ordered_at"
            name = "Order Completed"
            message_id = "order_id"
            properties = { revenue = "total" }
        "#;
        let c = Config::parse(text, Path::new("tribe.toml")).unwrap();
        assert_eq!(c.workspace.storage, "s3://bucket/prefix");
        assert_eq!(c.events.properties["basket_size"], ValueType::Long);
        let pos = &c.records["pos"];
        assert_eq!(pos.identifiers["loyalty_id"], "card");
        assert_eq!(pos.event.as_ref().unwrap().properties["revenue"], "total");
        let again = Config::parse(&c.to_toml(), Path::new("x")).unwrap();
        assert_eq!(again.records["pos"].columns["total"], ValueType::Double);
    }

    #[test]
    fn rejects_unknown_keys_with_position() {
        let err = Config::parse("[workspace]\nstorag = \"x\"\n", Path::new("tribe.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("tribe.toml: unknown field `storag`"),
            "{err}"
        );
        assert!(err.contains("at byte"), "{err}");
    }

    #[test]
    fn event_mapping_needs_exactly_one_name() {
        let text = "[records.pos.event]\ntimestamp = \"t\"\n";
        let err = Config::parse(text, Path::new("tribe.toml")).unwrap_err();
        assert!(err.to_string().contains("exactly one of `name`"), "{err}");
    }

    #[test]
    fn finds_the_nearest_workspace_upward() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "").unwrap();
        let deep = dir.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_workspace(None, None, &deep).unwrap(), dir.path());
        let other = tempfile::tempdir().unwrap();
        assert!(matches!(
            find_workspace(None, None, other.path()),
            Err(Error::NoWorkspace)
        ));
        assert!(find_workspace(Some(other.path()), None, &deep).is_err());
        assert_eq!(
            find_workspace(None, Some(dir.path()), other.path()).unwrap(),
            dir.path()
        );
    }
}
