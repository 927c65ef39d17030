//! Typed errors of the library. The binary renders them for humans; nothing here prints.

use std::path::PathBuf;

/// Everything that can go wrong in tribe, by where it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no workspace found: pass --workspace DIR, set TRIBE_WORKSPACE, or run `tribe init`")]
    NoWorkspace,

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("bad storage URL {url:?}: {message}")]
    StorageUrl { url: String, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Input(String),

    #[error("table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    #[error("{0}")]
    Query(#[from] datafusion::error::DataFusionError),

    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("{0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error("strict ingest: {rejected} row(s) rejected, nothing was committed; first: {first}")]
    StrictRejected { rejected: u64, first: String },

    #[error("nothing was accepted from the input ({rejected} rejected)")]
    NothingAccepted { rejected: u64 },

    /// Someone else is doing it right now (an export run in progress).
    #[error("{0}")]
    Busy(String),

    #[error("{0}")]
    Other(String),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a Delta error with the name of the table it happened on.
    pub fn delta(table: &str, source: deltalake::DeltaTableError) -> Self {
        Error::Delta {
            table: table.to_string(),
            source: Box::new(source),
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
