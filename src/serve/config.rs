//! `[serve]` in `tribe.toml`: addresses, write keys per source, SQL users, TLS and the collector's
//! log and flush settings. Secrets may be written as `env:NAME` so that they live in the
//! environment rather than in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `[serve]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Collector address when `--collector` is given without one.
    #[serde(default = "default_collector")]
    pub collector: String,
    /// Postgres endpoint address when `--pg` is given without one.
    #[serde(default = "default_pg")]
    pub pg: String,
    /// Write keys by source: `web = "wk_123"` (or `"env:WEB_WRITE_KEY"`). Events sent with a key
    /// are stored with its source.
    #[serde(default)]
    pub write_keys: BTreeMap<String, String>,
    /// SQL users and their passwords (`analyst = "env:ANALYST_PASSWORD"`). `TRIBE_PG_USER` and
    /// `TRIBE_PG_PASSWORD` add one more from the environment.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// PEM certificate and PKCS#8 key: with both, the Postgres endpoint speaks TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Write-ahead log folder (relative to the workspace). It must be on a local disk.
    #[serde(default = "default_wal_dir")]
    pub wal_dir: String,
    /// A flush starts when this many bytes of events wait in the log...
    #[serde(default = "default_flush_bytes")]
    pub flush_bytes: u64,
    /// ...or when the oldest waiting event is this old.
    #[serde(default = "default_flush_seconds")]
    pub flush_seconds: f64,
    /// With this many bytes in the log not yet flushed (storage is slow or down), the collector
    /// answers 503 and clients retry later, instead of buffering without bound.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            collector: default_collector(),
            pg: default_pg(),
            write_keys: BTreeMap::new(),
            users: BTreeMap::new(),
            tls_cert: None,
            tls_key: None,
            wal_dir: default_wal_dir(),
            flush_bytes: default_flush_bytes(),
            flush_seconds: default_flush_seconds(),
            max_log_bytes: default_max_log_bytes(),
        }
    }
}

fn default_collector() -> String {
    "127.0.0.1:8088".into()
}
fn default_pg() -> String {
    "127.0.0.1:5433".into()
}
fn default_wal_dir() -> String {
    "wal".into()
}
fn default_flush_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_flush_seconds() -> f64 {
    5.0
}
fn default_max_log_bytes() -> u64 {
    2 * 1024 * 1024 * 1024
}

impl ServeConfig {
    /// Checks what can be checked without the environment.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for source in self.write_keys.keys() {
            if source.is_empty() || source.chars().any(|c| c.is_control()) {
                return Err(format!("serve.write_keys: bad source name {source:?}"));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("serve: tls_cert and tls_key go together".into());
        }
        if self.flush_seconds.is_nan() || self.flush_seconds <= 0.0 {
            return Err("serve.flush_seconds must be positive".into());
        }
        if self.flush_bytes == 0 || self.max_log_bytes < self.flush_bytes {
            return Err("serve: max_log_bytes must be at least flush_bytes (> 0)".into());
        }
        Ok(())
    }

    /// Write key → source, with `env:` values read from the environment.
    pub fn write_key_sources(&self) -> Result<BTreeMap<String, String>> {
        let mut keys = BTreeMap::new();
        for (source, key) in &self.write_keys {
            let key = secret(key, &format!("serve.write_keys.{source}"))?;
            if let Some(other) = keys.insert(key, source.clone()) {
                return Err(Error::Input(format!(
                    "serve.write_keys: sources {other:?} and {source:?} have the same key"
                )));
            }
        }
        Ok(keys)
    }

    /// SQL user → password, from the config and `TRIBE_PG_USER` / `TRIBE_PG_PASSWORD`.
    pub fn sql_users(&self) -> Result<BTreeMap<String, String>> {
        let mut users = BTreeMap::new();
        for (user, password) in &self.users {
            users.insert(
                user.clone(),
                secret(password, &format!("serve.users.{user}"))?,
            );
        }
        if let (Ok(user), Ok(password)) = (
            std::env::var("TRIBE_PG_USER"),
            std::env::var("TRIBE_PG_PASSWORD"),
        ) {
            users.insert(user, password);
        }
        Ok(users)
    }

    /// The log folder for a workspace.
    pub fn wal_path(&self, workspace: &Path) -> PathBuf {
        workspace.join(&self.wal_dir)
    }
}

/// A secret as written: `env:NAME` reads the variable, anything else is the value itself.
fn secret(value: &str, what: &str) -> Result<String> {
    match value.strip_prefix("env:") {
        Some(name) => std::env::var(name)
            .map_err(|_| Error::Input(format!("{what}: environment variable {name} is not set"))),
        None => Ok(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_the_environment_when_asked() {
        let mut config = ServeConfig::default();
        config.write_keys.insert("web".into(), "wk1".into());
        config
            .write_keys
            .insert("app".into(), "env:TRIBE_TEST_SURELY_UNSET".into());
        let err = config.write_key_sources().unwrap_err().to_string();
        assert!(err.contains("serve.write_keys.app"), "{err}");
        assert!(err.contains("TRIBE_TEST_SURELY_UNSET"), "{err}");
        config.write_keys.insert("app".into(), "wk1".into());
        let err = config.write_key_sources().unwrap_err().to_string();
        assert!(err.contains("same key"), "{err}");
    }

    #[test]
    fn tls_needs_both_files() {
        let config = ServeConfig {
            tls_cert: Some("c.pem".into()),
            ..ServeConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("together"));
    }
}
