//! Export definitions as users write them: `[exports.NAME]` in `tribe.toml`, or one file per
//! export in `exports/NAME.toml`. This file owns their shape and the checks that need no data;
//! `audience` checks the columns against the tables.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::is_identifier;
use crate::error::{Error, Result};

/// One export: which segment, which columns, in which format, where, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The segment whose members are exported.
    pub segment: String,
    /// A platform format: `google_customer_match` or `meta_custom_audience`. It fixes the
    /// columns; `fields` says where its inputs come from when they are not the usual names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Where a preset's inputs come from: `first_name = "given_name"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// The columns, without a preset: profile fields and traits, renamed, normalised, hashed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnConfig>,
    /// `csv` (default), `jsonl` or `parquet`.
    #[serde(default = "default_format")]
    pub format: String,
    /// Where each run goes: a folder (relative to the workspace) or a URL, with `{export}`,
    /// `{run}`, `{segment}` and `{date}` (the as-of date) filled in. Must contain `{run}`.
    #[serde(default = "default_destination")]
    pub destination: String,
    /// Only profiles that consented to this channel (`consent_<channel>` is true) are exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<String>,
    /// Members of this segment are never exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress: Option<String>,
    /// Split files after this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_file: Option<u64>,
    /// A cron expression (5 fields, or 6 with seconds; `@daily` and friends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The time zone the schedule is read in (IANA name).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Scheduled times missed while nothing was running: `catch_up` runs each of them in order,
    /// `latest` runs only the most recent and records the others as skipped.
    #[serde(default = "default_missed")]
    pub missed: String,
    /// Attempts of a scheduled run before it is given up.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Seconds before the first retry of a failed scheduled run; doubled after each failure,
    /// at most an hour.
    #[serde(default = "default_retry")]
    pub retry_seconds: u64,
}

/// A column: a field name, or a table with a rename, normalisation and hashing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnConfig {
    Field(String),
    Spec(ColumnSpec),
}

impl ColumnConfig {
    /// The profile field or trait it reads.
    pub fn source(&self) -> &str {
        match self {
            ColumnConfig::Field(f) => f,
            ColumnConfig::Spec(s) => &s.from,
        }
    }

    /// Its name in the files.
    pub fn output_name(&self) -> &str {
        match self {
            ColumnConfig::Field(f) => f,
            ColumnConfig::Spec(s) => s.name.as_deref().unwrap_or(&s.from),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The profile field or trait.
    pub from: String,
    /// The column name in the file (default: the field name).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalize>,
    /// `sha256`: the hex SHA-256 of the (normalised) value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// How a value is cleaned before it is written or hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Leading and trailing white space removed.
    Trim,
    /// Trimmed and lower-cased.
    Lower,
    /// Trimmed and lower-cased (an e-mail address).
    Email,
    /// E.164: `+` and digits only.
    Phone,
    /// Digits only.
    Digits,
    /// Trimmed, lower-cased, only the letters a-z kept.
    Letters,
    /// Trimmed and upper-cased (a country code).
    Upper,
    /// Google's e-mail rule: trimmed, lower-cased, dots before `@gmail.com`/`@googlemail.com`
    /// removed.
    GoogleEmail,
    /// Meta's e-mail rule: lower-cased, white space and dots trimmed from both ends.
    MetaEmail,
    /// Meta's country rule: the first two letters a-z, lower-cased.
    MetaCountry,
    /// Meta's zip rule: lower-cased, spaces removed, the part before a `-`.
    MetaZip,
}

fn default_format() -> String {
    "csv".into()
}
fn default_destination() -> String {
    "audiences/{export}/{run}/".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_missed() -> String {
    "catch_up".into()
}
fn default_attempts() -> u32 {
    3
}
fn default_retry() -> u64 {
    60
}

/// The platform presets.
pub const PRESETS: &[&str] = &["google_customer_match", "meta_custom_audience"];

impl ExportConfig {
    /// A minimal definition: `segment` to CSV in the default destination.
    pub fn new(segment: &str) -> ExportConfig {
        toml::from_str(&format!("segment = {segment:?}")).expect("minimal export parses")
    }

    /// The checks that need no data: names, format, template, schedule, time zone.
    pub fn validate(&self, name: &str) -> std::result::Result<(), String> {
        if !is_identifier(name) {
            return Err("export names are letters, digits and _".into());
        }
        if !["csv", "jsonl", "parquet"].contains(&self.format.as_str()) {
            return Err(format!(
                "format: {:?} is not csv, jsonl or parquet",
                self.format
            ));
        }
        if !self.destination.contains("{run}") {
            return Err(format!(
                "destination: {:?} must contain {{run}}, so that every run has its own folder",
                self.destination
            ));
        }
        let mut rest = self.destination.as_str();
        while let Some(start) = rest.find('{') {
            let end = rest[start..]
                .find('}')
                .ok_or("destination: a { without its }")?;
            let var = &rest[start + 1..start + end];
            if !["export", "run", "segment", "date"].contains(&var) {
                return Err(format!(
                    "destination: unknown {{{var}}} (known: {{export}}, {{run}}, {{segment}}, {{date}})"
                ));
            }
            rest = &rest[start + end..];
        }
        match &self.preset {
            Some(p) if !PRESETS.contains(&p.as_str()) => {
                return Err(format!(
                    "preset: {p:?} is not one of {}",
                    PRESETS.join(", ")
                ));
            }
            Some(_) if !self.columns.is_empty() => {
                return Err("a preset fixes the columns: remove `columns`, or remove `preset` and list the columns".into());
            }
            None if self.columns.is_empty() => {
                return Err("set `columns` (or a `preset`)".into());
            }
            None if !self.fields.is_empty() => {
                return Err("`fields` only applies to a preset".into());
            }
            _ => {}
        }
        for c in &self.columns {
            if let ColumnConfig::Spec(s) = c
                && let Some(h) = &s.hash
                && h != "sha256"
            {
                return Err(format!("columns: hash {h:?} is not \"sha256\""));
            }
        }
        if let Some(channel) = &self.consent
            && !is_identifier(channel)
        {
            return Err(format!("consent: {channel:?} is not a channel name"));
        }
        if self.max_rows_per_file == Some(0) {
            return Err("max_rows_per_file: must be at least 1".into());
        }
        if self.missed != "catch_up" && self.missed != "latest" {
            return Err(format!(
                "missed: {:?} is not \"catch_up\" or \"latest\"",
                self.missed
            ));
        }
        if self.max_attempts == 0 {
            return Err("max_attempts: must be at least 1".into());
        }
        if let Some(cron) = &self.schedule {
            crate::schedule::parse_cron(cron)?;
        }
        crate::schedule::parse_timezone(&self.timezone)?;
        Ok(())
    }

    /// The file extension of the format.
    pub fn extension(&self) -> &str {
        match self.format.as_str() {
            "jsonl" => "jsonl",
            "parquet" => "parquet",
            _ => "csv",
        }
    }
}

/// Reads `exports/*.toml` of a workspace (one export per file, named after the file) and adds
/// them to those of `tribe.toml`; a name defined twice is an error.
pub fn load_dir(dir: &Path, exports: &mut BTreeMap<String, ExportConfig>) -> Result<()> {
    let folder = dir.join("exports");
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Ok(());
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let config: ExportConfig = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            message: crate::config::one_line(&e),
        })?;
        config.validate(&name).map_err(|message| Error::Config {
            path: path.clone(),
            message,
        })?;
        if exports.contains_key(&name) {
            return Err(Error::Config {
                path,
                message: format!("export {name} is also defined in tribe.toml [exports.{name}]"),
            });
        }
        exports.insert(name, config);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ExportConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn columns_are_names_or_tables() {
        let c = parse(
            r#"segment = "vip"
               columns = ["email", { from = "clv", as = "value" }, { from = "phone", normalize = "phone", hash = "sha256" }]"#,
        );
        assert_eq!(c.columns.len(), 3);
        assert!(matches!(&c.columns[0], ColumnConfig::Field(f) if f == "email"));
        assert!(
            matches!(&c.columns[2], ColumnConfig::Spec(s) if s.normalize == Some(Normalize::Phone))
        );
        assert_eq!(c.validate("vip_csv"), Ok(()));
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let cases = [
            ("segment = \"s\"", "set `columns`"),
            (
                "segment = \"s\"\ncolumns = [\"email\"]\nformat = \"xml\"",
                "is not csv",
            ),
            (
                "segment = \"s\"\ncolumns = [\"email\"]\ndestination = \"out/\"",
                "must contain {run}",
            ),
            (
                "segment = \"s\"\ncolumns = [\"email\"]\ndestination = \"{run}/{when}\"",
                "unknown {when}",
            ),
            ("segment = \"s\"\npreset = \"tiktok\"", "is not one of"),
            (
                "segment = \"s\"\npreset = \"google_customer_match\"\ncolumns = [\"email\"]",
                "a preset fixes the columns",
            ),
            (
                "segment = \"s\"\ncolumns = [\"email\"]\nschedule = \"61 * * * *\"",
                "schedule",
            ),
            (
                "segment = \"s\"\ncolumns = [\"email\"]\ntimezone = \"Mars/Olympus\"",
                "timezone",
            ),
            (
                "segment = \"s\"\ncolumns = [{ from = \"email\", hash = \"md5\" }]",
                "hash \"md5\"",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).validate("x").unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
