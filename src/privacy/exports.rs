//! Erasure from past export runs the workspace owns: the run files under the storage root
//! (audience, adds, removes, with their manifest) and every export's state files. The state
//! holds each delivered row with its profile id, which is how a person's rows are recognised
//! in files that carry only hashed or plain identifiers: a file row is the person's when it is
//! byte for byte a row the state delivered for them. Files are rewritten first and the states
//! last, so a crash in between leaves the states that a re-run needs to finish the job.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::Schema;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::export::audience::PROFILE_ID;
use crate::export::files::{self, Location, MANIFEST, Manifest};
use crate::export::runs;
use crate::identity::sightings::strings;
use crate::storage::TableSpec;
use crate::workspace::Workspace;

/// What erasure from export files did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ExportErasure {
    pub files_rewritten: u64,
    pub rows_removed: u64,
    pub state_files_rewritten: u64,
}

/// One export state file that holds rows of the person, read in full.
struct State {
    export: String,
    run: String,
    /// Its name below `export_state/`.
    name: String,
    batches: Vec<RecordBatch>,
}

impl State {
    /// Which rows are the person's.
    fn mine(&self, ids: &HashSet<&str>) -> Result<Vec<Vec<bool>>> {
        self.batches
            .iter()
            .map(|b| {
                let pid = strings(b.column(0))?;
                Ok((0..b.num_rows())
                    .map(|i| !pid.is_null(i) && ids.contains(pid.value(i)))
                    .collect())
            })
            .collect()
    }

    /// The person's rows as delivered (without the profile id).
    fn theirs(&self, ids: &HashSet<&str>) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for (b, mine) in self.batches.iter().zip(self.mine(ids)?) {
            out.push(without_id(&filter_record_batch(
                b,
                &BooleanArray::from(mine),
            )?)?);
        }
        Ok(out)
    }

    /// Everyone else's rows.
    fn others(&self, ids: &HashSet<&str>) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for (b, mine) in self.batches.iter().zip(self.mine(ids)?) {
            let keep: BooleanArray = mine.iter().map(|m| Some(!m)).collect();
            out.push(filter_record_batch(b, &keep)?);
        }
        Ok(out)
    }
}

/// The state files that hold rows of `ids`. Every state is checked by its profile id column
/// alone (ranged reads); only those that hold the person are read in full.
async fn states_of(states: &Location, ids: &HashSet<&str>) -> Result<Vec<State>> {
    let mut out = Vec::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let id_column: BTreeSet<&str> = [PROFILE_ID].into();
    for (name, size) in states.list().await? {
        let Some((export, run)) = name
            .strip_suffix(".parquet")
            .and_then(|n| n.split_once('/'))
        else {
            continue;
        };
        let path = states.path(&name);
        let holds = super::parquet_any(states.store.clone(), &path, size, &id_column, |b| {
            let pid = strings(b.column(0))?;
            Ok((0..b.num_rows()).any(|i| !pid.is_null(i) && ids.contains(pid.value(i))))
        })
        .await?;
        if !holds {
            continue;
        }
        let Some(bytes) = states.get(&name).await? else {
            continue;
        };
        out.push(State {
            export: export.to_string(),
            run: run.to_string(),
            name: name.clone(),
            batches: files::read_parquet(bytes)?,
        });
    }
    Ok(out)
}

fn id_set(profile_ids: &[String]) -> HashSet<&str> {
    profile_ids.iter().map(String::as_str).collect()
}

/// Removes the rows of `profile_ids` from every owned export file and state.
pub async fn erase(ws: &Workspace, profile_ids: &[String]) -> Result<ExportErasure> {
    let mut out = ExportErasure::default();
    let ids = id_set(profile_ids);
    let place = Location::resolve(ws.storage.root(), "export_state/")?;
    let mut by_export: BTreeMap<String, Vec<State>> = BTreeMap::new();
    for state in states_of(&place, &ids).await? {
        by_export
            .entry(state.export.clone())
            .or_default()
            .push(state);
    }
    if by_export.is_empty() {
        return Ok(out);
    }
    let runs_table = ws
        .storage
        .open(&TableSpec::existing(runs::TABLE, runs::TABLE))
        .await?;
    let root = ws.storage.root().as_str().to_string();
    for (export, states) in by_export {
        // The person's rows as delivered, from every state of the export.
        let mut theirs: Vec<RecordBatch> = Vec::new();
        for state in &states {
            theirs.extend(state.theirs(&ids)?);
        }
        let delivered = match &runs_table {
            Some(t) => runs::read(t, Some(&export)).await?,
            None => Vec::new(),
        };
        let destinations: BTreeSet<String> = delivered
            .into_iter()
            .filter_map(|r| r.destination)
            .collect();
        for dest in destinations {
            // Files delivered elsewhere are the recipient's; only our own storage is rewritten.
            if !dest.starts_with(&root) {
                continue;
            }
            let run_place = Location::resolve(ws.storage.root(), &dest)?;
            let (files, rows) = rewrite_run(&run_place, &theirs).await?;
            out.files_rewritten += files;
            out.rows_removed += rows;
        }
        crate::pause_point("export-files");
        for state in &states {
            let kept = state.others(&ids)?;
            let schema = state.batches[0].schema();
            place
                .put(&state.name, files::encode_state(&schema, &kept)?)
                .await?;
            out.state_files_rewritten += 1;
        }
    }
    Ok(out)
}

/// The person's rows in every export state, each with its export and run.
pub async fn state_rows(
    ws: &Workspace,
    profile_ids: &[String],
) -> Result<Vec<crate::identity::show::Record>> {
    let ids = id_set(profile_ids);
    let place = Location::resolve(ws.storage.root(), "export_state/")?;
    let mut out = Vec::new();
    for state in states_of(&place, &ids).await? {
        for mut r in crate::identity::show::to_records(&state.theirs(&ids)?)? {
            r.0.insert(0, ("run_id".into(), state.run.clone().into()));
            r.0.insert(0, ("export".into(), state.export.clone().into()));
            out.push(r);
        }
    }
    Ok(out)
}

/// Rewrites the files of one run without the person's rows; returns (files, rows) changed.
async fn rewrite_run(place: &Location, theirs: &[RecordBatch]) -> Result<(u64, u64)> {
    let Some(bytes) = place.get(MANIFEST).await? else {
        return Ok((0, 0));
    };
    let Ok(mut manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
        return Ok((0, 0));
    };
    let lines = row_texts(&manifest.format, theirs)?;
    let (mut files_changed, mut rows_removed) = (0, 0);
    for entry in manifest.files.iter_mut() {
        let Some(bytes) = place.get(&entry.name).await? else {
            continue;
        };
        let (new, removed) = if manifest.format == "parquet" {
            let json = row_texts("jsonl", theirs)?;
            filter_parquet(bytes, &json)?
        } else {
            filter_lines(&bytes, &lines, manifest.format != "jsonl")
        };
        if removed == 0 {
            continue;
        }
        entry.rows -= removed.min(entry.rows);
        entry.bytes = new.len() as u64;
        entry.sha256 = hex::encode(Sha256::digest(&new));
        match entry.kind.as_str() {
            "audience" => manifest.audience -= removed.min(manifest.audience),
            "adds" => manifest.adds -= removed.min(manifest.adds),
            "removes" => manifest.removes -= removed.min(manifest.removes),
            _ => {}
        }
        place.put(&entry.name, new).await?;
        files_changed += 1;
        rows_removed += removed;
    }
    if files_changed > 0 {
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        place.put(MANIFEST, text).await?;
    }
    Ok((files_changed, rows_removed))
}

/// Each row of `batches` as the line `format` writes for it (CSV without its header).
fn row_texts(format: &str, batches: &[RecordBatch]) -> Result<HashSet<Vec<u8>>> {
    let mut out = HashSet::new();
    for b in batches {
        for line in lines_of(format, b)? {
            out.insert(line);
        }
    }
    Ok(out)
}

/// The lines `format` writes for the rows of `b`, one per row (CSV without its header).
fn lines_of(format: &str, b: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let bytes = files::encode(format, &b.schema(), std::slice::from_ref(b))?;
    let mut lines: Vec<Vec<u8>> = bytes
        .split_inclusive(|c| *c == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    if format != "jsonl" && !lines.is_empty() {
        lines.remove(0);
    }
    Ok(lines)
}

/// The file without the lines in `lines` (a CSV header always stays); and how many went.
fn filter_lines(bytes: &[u8], lines: &HashSet<Vec<u8>>, header: bool) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(bytes.len());
    let mut removed = 0;
    for (i, line) in bytes.split_inclusive(|c| *c == b'\n').enumerate() {
        if (i > 0 || !header) && lines.contains(line) {
            removed += 1;
        } else {
            out.extend_from_slice(line);
        }
    }
    (out, removed)
}

/// A Parquet file without the rows whose JSON line is in `json`.
fn filter_parquet(bytes: bytes::Bytes, json: &HashSet<Vec<u8>>) -> Result<(Vec<u8>, u64)> {
    let batches = files::read_parquet(bytes)?;
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Ok((Vec::new(), 0));
    };
    let mut kept = Vec::new();
    let mut removed = 0;
    for b in &batches {
        let lines = lines_of("jsonl", b)?;
        if lines.len() != b.num_rows() {
            // JSON lines escape line breaks, so each row is one line; anything else is a bug
            // worth stopping for rather than a row left behind.
            return Err(crate::Error::Other(
                "an export file's rows could not be matched line by line".into(),
            ));
        }
        let keep: Vec<bool> = lines.iter().map(|l| !json.contains(l)).collect();
        removed += keep.iter().filter(|k| !**k).count() as u64;
        kept.push(filter_record_batch(b, &BooleanArray::from(keep))?);
    }
    if removed == 0 {
        return Ok((Vec::new(), 0));
    }
    Ok((files::encode("parquet", &schema, &kept)?, removed))
}

fn without_id(b: &RecordBatch) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(b.schema().fields()[1..].to_vec()));
    Ok(RecordBatch::try_new(schema, b.columns()[1..].to_vec())?)
}
