//! The files of an export run: where they go (any object store, or a local folder), how rows are
//! encoded (CSV, JSON lines, Parquet), split by size, counted and checksummed, and the manifest
//! that is written last and marks the run delivered.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use crate::error::{Error, Result};

/// The manifest's file name; a run folder without it holds no delivered run.
pub const MANIFEST: &str = "manifest.json";

/// A folder on some object store.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: StorePath,
    /// For messages and the runs table.
    pub url: String,
}

impl Location {
    /// The location of a folder: a URL (`s3://`, `gs://`, `az://`, `file://`), an absolute
    /// local path, or a path relative to `root` (the workspace's storage root). Credentials and
    /// endpoints come from the standard environment variables.
    pub fn resolve(root: &Url, folder: &str) -> Result<Location> {
        let bad = |message: String| Error::StorageUrl {
            url: folder.to_string(),
            message,
        };
        let url = if folder.contains("://") {
            Url::parse(folder).map_err(|e| bad(e.to_string()))?
        } else if Path::new(folder).is_absolute() {
            Url::from_directory_path(folder).map_err(|_| bad("not a folder path".into()))?
        } else {
            root.join(folder).map_err(|e| bad(e.to_string()))?
        };
        Self::open(url)
    }

    fn open(url: Url) -> Result<Location> {
        let bad = |message: String| Error::StorageUrl {
            url: url.to_string(),
            message,
        };
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "abfs" | "abfss" | "azure" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "file" => Arc::new(object_store::local::LocalFileSystem::new()),
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?} (use a folder, s3://, gs://, az:// or file://)"
                )));
            }
        };
        let prefix = if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|_| bad("not a local path".into()))?;
            StorePath::from_absolute_path(path).map_err(|e| bad(e.to_string()))?
        } else {
            StorePath::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?
        };
        let mut shown = url.to_string();
        if !shown.ends_with('/') {
            shown.push('/');
        }
        Ok(Location {
            store,
            prefix,
            url: shown,
        })
    }

    /// The store path of an object in this folder.
    pub fn path(&self, name: &str) -> StorePath {
        name.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }

    fn err(&self, e: object_store::Error) -> Error {
        Error::Other(format!("{}: {e}", self.url))
    }

    /// Stores one object in a single atomic put.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.path(name), PutPayload::from(bytes))
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// [`Location::put`] for futures that must not borrow their arguments.
    pub async fn put_owned(&self, name: String, bytes: Vec<u8>) -> Result<()> {
        self.put(&name, bytes).await
    }

    /// An object's bytes, or `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<bytes::Bytes>> {
        match self.store.get(&self.path(name)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err(e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Deletes one object (a missing one is fine).
    pub async fn delete(&self, name: &str) -> Result<()> {
        match self.store.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Every object below this location.
    async fn objects(&self) -> Result<Vec<object_store::ObjectMeta>> {
        use futures::TryStreamExt;
        self.store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(e))
    }

    /// The names (relative to this location) and sizes of every object below it, by name.
    pub async fn list(&self) -> Result<Vec<(String, u64)>> {
        let objects = self.objects().await?;
        let prefix: Vec<_> = self.prefix.parts().collect();
        let mut names: Vec<(String, u64)> = objects
            .iter()
            .map(|o| {
                let name = o
                    .location
                    .parts()
                    .skip(prefix.len())
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                (name, o.size)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes every object below this location; returns how many.
    pub async fn delete_all(&self) -> Result<usize> {
        let objects = self.objects().await?;
        for o in &objects {
            match self.store.delete(&o.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(objects.len())
    }
}

/// Retries of a destination: enough to ride out a blip, short enough that an unreachable
/// destination fails the run within seconds (a scheduled run is retried later anyway).
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(200),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(20),
    }
}

/// Fills in a destination template.
pub fn render(template: &str, export: &str, run: &str, segment: &str, date: &str) -> String {
    template
        .replace("{export}", export)
        .replace("{run}", run)
        .replace("{segment}", segment)
        .replace("{date}", date)
}

/// Files encoded for writing: each with its manifest entry.
pub type Encoded = Vec<(FileEntry, Vec<u8>)>;

/// One written file, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    /// `audience`, `adds` or `removes`.
    pub kind: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// The manifest of a delivered run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub export: String,
    pub segment: String,
    pub definition_hash: String,
    pub as_of: String,
    pub scheduled_for: Option<String>,
    pub created_at: String,
    pub format: String,
    pub columns: Vec<String>,
    /// The delivered run the adds and removes are relative to.
    pub previous_run: Option<String>,
    pub audience: u64,
    pub adds: u64,
    pub removes: u64,
    pub files: Vec<FileEntry>,
}

/// Encodes rows in `format`; CSV has a header even without rows. CSV and JSON lines are
/// encoded batch by batch on all cores and joined (they are line formats).
pub fn encode(format: &str, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    if format == "parquet" {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(
                parquet::basic::ZstdLevel::try_new(1).expect("valid level"),
            ))
            .build();
        return parquet_bytes(schema, batches, props);
    }
    let mut out = Vec::new();
    if format != "jsonl" {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        w.write(&RecordBatch::new_empty(schema.clone()))?;
    }
    let parts: Vec<Vec<u8>> = batches
        .par_iter()
        .map(|b| -> Result<Vec<u8>> {
            let mut buf = Vec::new();
            if format == "jsonl" {
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                w.write(b)?;
                w.finish()?;
            } else {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(false)
                    .build(&mut buf);
                w.write(b)?;
            }
            Ok(buf)
        })
        .collect::<Result<_>>()?;
    out.reserve(parts.iter().map(Vec::len).sum());
    for p in parts {
        out.extend_from_slice(&p);
    }
    Ok(out)
}

/// The state of a run (profile ids with the rows as delivered) as Parquet, tuned for speed:
/// hashes neither compress much nor repeat, so no dictionary, no statistics and fast LZ4.
pub fn encode_state(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::LZ4_RAW)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
        .build();
    parquet_bytes(schema, batches, props)
}

fn parquet_bytes(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    props: parquet::file::properties::WriterProperties,
) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(buf)
}

/// Every row of a Parquet file held in memory (states, run files).
pub fn read_parquet(bytes: bytes::Bytes) -> Result<Vec<RecordBatch>> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Splits rows into pieces of at most `max` rows (one piece, maybe empty, without a limit).
pub fn split(batches: &[RecordBatch], max: Option<u64>) -> Vec<Vec<RecordBatch>> {
    let Some(max) = max.map(|m| m as usize) else {
        return vec![batches.to_vec()];
    };
    let mut pieces = vec![Vec::new()];
    let mut in_piece = 0;
    for b in batches {
        let mut offset = 0;
        while offset < b.num_rows() {
            if in_piece == max {
                pieces.push(Vec::new());
                in_piece = 0;
            }
            let take = (max - in_piece).min(b.num_rows() - offset);
            pieces
                .last_mut()
                .expect("one piece")
                .push(b.slice(offset, take));
            offset += take;
            in_piece += take;
        }
    }
    pieces
}

/// Encodes one kind of rows into its files: names, bytes and entries for the manifest.
pub fn files_of(
    kind: &str,
    format: &str,
    extension: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    max_rows: Option<u64>,
) -> Result<Encoded> {
    split(batches, max_rows)
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let bytes = encode(format, schema, &piece)?;
            let entry = FileEntry {
                name: format!("{kind}-{i:05}.{extension}"),
                kind: kind.to_string(),
                rows: piece.iter().map(|b| b.num_rows() as u64).sum(),
                bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            };
            Ok((entry, bytes))
        })
        .collect()
}

/// The same files as another kind (`adds-00000.csv` for `audience-00000.csv`).
pub fn renamed(files: &Encoded, kind: &str) -> Encoded {
    files
        .iter()
        .map(|(e, bytes)| {
            let part = e.name.split_once('-').map_or("", |(_, rest)| rest);
            let entry = FileEntry {
                name: format!("{kind}-{part}"),
                kind: kind.to_string(),
                ..e.clone()
            };
            (entry, bytes.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    fn rows(n: usize) -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)]));
        let values: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))])
            .unwrap();
        (schema, b)
    }

    #[test]
    fn files_split_at_the_row_limit_and_empty_kinds_still_get_a_file() {
        let (schema, b) = rows(25);
        let files = files_of(
            "adds",
            "csv",
            "csv",
            &schema,
            &[b.slice(0, 10), b.slice(10, 15)],
            Some(10),
        )
        .unwrap();
        let counts: Vec<u64> = files.iter().map(|(e, _)| e.rows).collect();
        assert_eq!(counts, [10, 10, 5]);
        assert_eq!(files[2].0.name, "adds-00002.csv");
        let text = String::from_utf8(files[0].1.clone()).unwrap();
        assert_eq!(text.lines().count(), 11, "header and ten rows");
        let empty = files_of("removes", "csv", "csv", &schema, &[], Some(10)).unwrap();
        assert_eq!(empty.len(), 1);
        assert_eq!(String::from_utf8(empty[0].1.clone()).unwrap(), "v\n");
        // The checksum is the SHA-256 of the bytes "v\n" (as `sha256sum` computes it).
        assert_eq!(
            empty[0].0.sha256,
            "73324e1ab1db72ee9eb4fdf1c90a586d67e00ab58330d1cbfea26ecd0a77fa4d"
        );
    }

    #[test]
    fn templates_fill_in_their_variables() {
        assert_eq!(
            render(
                "s3://b/{export}/{date}/{run}/",
                "vip",
                "r1",
                "seg",
                "2026-06-30"
            ),
            "s3://b/vip/2026-06-30/r1/"
        );
    }
}
