//! A workspace: a folder with `tribe.toml`, and the storage root it points at. Commands open one
//! of these first; it owns the config and the storage handle, not any table.

use std::path::{Path, PathBuf};

use crate::config::{CONFIG_FILE, Config};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Environment variable that overrides the storage root of `tribe.toml`.
pub const STORAGE_ENV: &str = "TRIBE_STORAGE";

/// An opened workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub dir: PathBuf,
    pub config: Config,
    pub storage: Storage,
}

impl Workspace {
    /// Opens the workspace in `dir` (which holds `tribe.toml`).
    pub fn open(dir: &Path) -> Result<Workspace> {
        let mut config = Config::load(&dir.join(CONFIG_FILE))?;
        crate::export::definition::load_dir(dir, &mut config.exports)?;
        let spec = std::env::var(STORAGE_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| config.workspace.storage.clone());
        let storage = Storage::resolve(dir, &spec)?;
        Ok(Workspace {
            dir: dir.to_path_buf(),
            config,
            storage,
        })
    }

    /// Creates a workspace in `dir`: writes `tribe.toml` (refusing to overwrite one).
    pub fn init(dir: &Path, config: Config) -> Result<Workspace> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(CONFIG_FILE);
        if path.exists() {
            return Err(Error::Config {
                path,
                message: "already exists; this folder is a workspace already".into(),
            });
        }
        // Check the storage setting before writing anything.
        Storage::resolve(dir, &config.workspace.storage)?;
        std::fs::write(&path, config.to_toml()).map_err(|e| Error::io(&path, e))?;
        Workspace::open(dir)
    }
}
