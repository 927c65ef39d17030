//! Privacy: consent statements, subject access (`show`, `export`), the right to be forgotten
//! (`forget`) and the audit trail of those requests. It owns the tables `privacy_consent`,
//! `privacy_tombstones` and `privacy_log`, and the storage folder `_privacy/` (the salt of the
//! identifier hashes and the plans of erasures under way).
//!
//! Identifiers never leave this module in the clear once a person is forgotten: the tombstones
//! and the log hold salted SHA-256 hashes only.

pub mod access;
pub mod consent;
mod exports;
pub mod forget;
pub mod log;
pub mod person;
pub mod tombstone;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::export::files::Location;
use crate::workspace::Workspace;

/// The storage folder of privacy bookkeeping, below the storage root.
const FOLDER: &str = "_privacy/";

/// The folder `_privacy/` of the workspace's storage.
fn folder(ws: &Workspace) -> Result<Location> {
    Location::resolve(ws.storage.root(), FOLDER)
}

/// The workspace's secret salt for identifier hashes, created on first use. Without a salt,
/// the hash of an e-mail address could be looked up in a list of hashed addresses.
pub async fn salt(ws: &Workspace) -> Result<Vec<u8>> {
    use object_store::{PutMode, PutOptions, PutPayload};
    let place = folder(ws)?;
    if let Some(bytes) = place.get("salt").await? {
        return Ok(bytes.to_vec());
    }
    let fresh = uuid::Uuid::new_v4().as_bytes().to_vec();
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    // Two processes creating it at once: the first one wins, both read the winner's salt.
    let put = place
        .store
        .put_opts(&place.path("salt"), PutPayload::from(fresh), options)
        .await;
    match put {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(Error::Other(format!("{}salt: {e}", place.url))),
    }
    place
        .get("salt")
        .await?
        .map(|b| b.to_vec())
        .ok_or_else(|| Error::Other(format!("{}salt: missing after it was written", place.url)))
}

/// Whether `test` holds for some batch of a Parquet object read with only the `columns` it
/// needs: DataFusion's reader fetches the footer and those column chunks by range, not the
/// whole object.
pub(crate) async fn parquet_any(
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    path: &object_store::path::Path,
    size: u64,
    columns: &std::collections::BTreeSet<&str>,
    mut test: impl FnMut(&arrow::array::RecordBatch) -> Result<bool>,
) -> Result<bool> {
    use datafusion::datasource::listing::PartitionedFile;
    use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
    use datafusion::datasource::physical_plan::parquet::DefaultParquetFileReaderFactory;
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
    use futures::TryStreamExt;
    use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
    let reader: Box<dyn parquet::arrow::async_reader::AsyncFileReader> =
        DefaultParquetFileReaderFactory::new(store).create_reader(
            0,
            PartitionedFile::new(path.to_string(), size),
            None,
            &ExecutionPlanMetricsSet::new(),
        )?;
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let indices: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| columns.contains(f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    if indices.is_empty() {
        return Ok(false);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let mut stream = builder.with_projection(mask).build()?;
    while let Some(batch) = stream.try_next().await? {
        if test(&batch)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The salted hash of an identifier: hex SHA-256 of salt, type and (normalised) value.
pub fn hash_identifier(salt: &[u8], id_type: &str, value: &str) -> String {
    hex::encode(digest(salt, id_type, value))
}

/// [`hash_identifier`] as raw bytes.
fn digest(salt: &[u8], id_type: &str, value: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(id_type.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_depend_on_salt_type_and_value() {
        let a = hash_identifier(b"s1", "email", "ana@example.com");
        assert_eq!(a.len(), 64);
        assert_eq!(a, hash_identifier(b"s1", "email", "ana@example.com"));
        assert_ne!(a, hash_identifier(b"s2", "email", "ana@example.com"));
        assert_ne!(a, hash_identifier(b"s1", "user_id", "ana@example.com"));
        assert_ne!(
            hash_identifier(b"s1", "ab", "c"),
            hash_identifier(b"s1", "a", "bc")
        );
    }
}
