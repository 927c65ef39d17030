//! `tribe ingest records --source NAME`: rows from another system (CRM contacts, point-of-sale
//! orders) into that source's table, checked against its mapping in `tribe.toml`. With an
//! `event` mapping, each row also becomes an event (`Order Completed` with its revenue).

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use indicatif::ProgressBar;
use serde_json::{Map, Value};

use super::batch::{EventBatchBuilder, TypedBuilder};
use super::input::{Format, PositionKind, batch_to_json_lines};
use super::message::{
    EventRow, MessageType, TypedValue, convert_text, parse_bool, parse_time, typed_values,
};
use super::rejected::{RejectedRow, file_label, raw_excerpt};
use super::{IngestReport, rejected};
use crate::config::{RecordSource, ValueType};
use crate::error::{Error, Result};
use crate::privacy::tombstone::{Tombstones, Verdict};
use crate::storage::append::{Append, CommitResult, KeyScope, key_hash};
use crate::storage::{TableSpec, schema, table_schema};
use crate::workspace::Workspace;

/// One input row: its position and its cells by column name (`None` for empty).
struct Row {
    position: u64,
    cells: BTreeMap<String, Option<String>>,
    raw: String,
}

/// A file's rows and column names in file order.
struct Table {
    columns: Vec<String>,
    rows: Vec<Row>,
    rejects: Vec<(u64, String, String)>,
    kind: PositionKind,
}

/// Rows per written batch.
const BATCH_ROWS: usize = 64 * 1024;

/// Ingests record files of one source; see the module doc.
pub async fn ingest_records(
    ws: &Workspace,
    source_name: &str,
    files: &[PathBuf],
    strict: bool,
    progress: &ProgressBar,
) -> Result<IngestReport> {
    let source = ws.config.records.get(source_name).ok_or_else(|| {
        let known: Vec<&str> = ws.config.records.keys().map(String::as_str).collect();
        Error::Input(format!(
            "unknown record source `{source_name}`: add [records.{source_name}] to tribe.toml{}",
            if known.is_empty() {
                String::new()
            } else {
                format!(" (configured: {})", known.join(", "))
            }
        ))
    })?;
    let mut inputs = Vec::new();
    for file in files {
        Format::of(file)?;
        if !file.is_file() {
            return Err(Error::Input(format!("{}: no such file", file.display())));
        }
        let table = read_table(file)?;
        check_mapping(file, source_name, source, &table.columns)?;
        inputs.push((file.clone(), table));
        progress.inc(std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) / 2);
    }

    // The table keeps the columns it has and gains those the files bring.
    let mut columns: Vec<String> = Vec::new();
    if let Some(existing) = ws
        .storage
        .open(&schema::records(source_name, source, &[]))
        .await?
    {
        let existing = table_schema(&existing)?;
        columns.extend(
            existing
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| !schema::RECORD_META.contains(&n.as_str())),
        );
    }
    for (_, table) in &inputs {
        for c in &table.columns {
            if !columns.contains(c) {
                columns.push(c.clone());
            }
        }
    }
    let spec = schema::records(source_name, source, &columns);
    ws.storage.evolve(&spec).await?;
    let stored = ws.storage.open_or_create(&spec).await?;
    let spec = TableSpec {
        schema: table_schema(&stored)?,
        ..spec
    };

    let now = chrono::Utc::now().timestamp_micros();
    let events_spec = schema::events(&ws.config);
    if source.event.is_some() {
        ws.storage.evolve(&events_spec).await?;
    }
    for _ in 0..5 {
        if let Some(report) = ingest_once(
            ws,
            source_name,
            source,
            &inputs,
            &spec,
            &events_spec,
            strict,
            now,
            progress,
        )
        .await?
        {
            return Ok(report);
        }
    }
    Err(Error::Other(format!(
        "{source_name}: gave up after 5 restarts caused by concurrent ingests"
    )))
}

#[allow(clippy::too_many_arguments)]
async fn ingest_once(
    ws: &Workspace,
    source_name: &str,
    source: &RecordSource,
    inputs: &[(PathBuf, Table)],
    spec: &TableSpec,
    events_spec: &TableSpec,
    strict: bool,
    now: i64,
    progress: &ProgressBar,
) -> Result<Option<IngestReport>> {
    let mut report = IngestReport {
        table: spec.name.clone(),
        files: inputs.len() as u64,
        ..IngestReport::default()
    };
    let mut rejects: Vec<RejectedRow> = Vec::new();
    let mut records = Append::start(&ws.storage, spec, "_record_id", KeyScope::Table).await?;
    let mut events = match source.event {
        Some(_) => {
            Some(Append::start(&ws.storage, events_spec, "message_id", KeyScope::PerDay).await?)
        }
        None => None,
    };
    let typed: Vec<(String, ValueType)> =
        schema::typed_properties(&ws.config).into_iter().collect();
    let stones = Tombstones::load(ws).await?;
    let types: Vec<(String, ValueType)> = spec
        .schema
        .fields()
        .iter()
        .skip(schema::RECORD_META.len())
        .map(|f| (f.name().clone(), ValueType::from_arrow(f.data_type())))
        .collect();

    for (file, table) in inputs {
        let label = file_label(file);
        let reject =
            |position: u64, field: Option<String>, reason: String, raw: &str| RejectedRow {
                stage: "ingest records",
                source: source_name.to_string(),
                file: label.clone(),
                position: Some(position),
                position_kind: table.kind,
                field,
                reason,
                raw: Some(raw_excerpt(raw.as_bytes())),
            };
        for (position, reason, raw) in &table.rejects {
            report.read += 1;
            rejects.push(reject(*position, None, reason.clone(), raw));
        }
        for rows in table.rows.chunks(BATCH_ROWS) {
            let mut good: Vec<(&Row, Vec<TypedValue>, String)> = Vec::with_capacity(rows.len());
            let mut event_rows: Vec<EventRow<'static>> = Vec::new();
            for row in rows {
                report.read += 1;
                match check_row(row, source, &types) {
                    Err((field, reason)) => {
                        rejects.push(reject(row.position, field, reason, &row.raw))
                    }
                    Ok((values, record_id)) => {
                        if record_verdict(&stones, row, source, now) == Verdict::Suppress {
                            report.suppressed += 1;
                            continue;
                        }
                        if let Some(mapping) = &source.event {
                            match event_of(
                                row,
                                source,
                                mapping,
                                source_name,
                                &record_id,
                                &typed,
                                now,
                            ) {
                                Ok(event) => event_rows.push(event),
                                Err((field, reason)) => {
                                    rejects.push(reject(row.position, field, reason, &row.raw));
                                    continue;
                                }
                            }
                        }
                        good.push((row, values, record_id));
                    }
                }
            }
            if strict && !rejects.is_empty() {
                records.abort().await;
                if let Some(e) = events {
                    e.abort().await;
                }
                return Err(Error::StrictRejected {
                    rejected: rejects.len() as u64,
                    first: rejects[0].describe(),
                });
            }
            let (batch, hashes) = record_batch(&spec.schema, &types, &good, &label, now)?;
            records.write(batch, &hashes).await?;
            if let Some(events) = events.as_mut() {
                let mut builder = EventBatchBuilder::new(events_spec.schema.clone(), &typed);
                for e in &event_rows {
                    builder.push(e, source_name);
                }
                let built = builder.finish();
                events.write(built.batch, &built.hashes).await?;
            }
        }
        progress.inc(std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) / 2);
    }

    let metadata = HashMap::from([
        (
            "tribe.operation".to_string(),
            serde_json::json!("ingest records"),
        ),
        ("tribe.source".to_string(), serde_json::json!(source_name)),
    ]);
    // Events first: if we stop between the two commits, a re-run finds the events stored and
    // completes the records.
    if let Some(events) = events {
        match events.commit(metadata.clone()).await? {
            CommitResult::Redo => {
                records.abort().await;
                return Ok(None);
            }
            CommitResult::Done(outcome) => report.events_inserted = outcome.inserted,
        }
    }
    match records.commit(metadata).await? {
        CommitResult::Redo => return Ok(None),
        CommitResult::Done(outcome) => report.complete(&outcome, &rejects),
    }
    rejected::store(&ws.storage, &rejects, now).await?;
    stones.record_lifts(ws).await?;
    Ok(Some(report))
}

/// Whether a row comes from a forgotten person: its identifier columns against the
/// tombstones, at the row's event time (or now), granting consent when a consent column says so.
fn record_verdict(stones: &Tombstones, row: &Row, source: &RecordSource, now: i64) -> Verdict {
    if stones.is_empty() {
        return Verdict::Keep;
    }
    let cell = |c: &str| row.cells.get(c).and_then(|v| v.as_deref());
    let ids: Vec<(&str, &str)> = source
        .identifiers
        .iter()
        .filter_map(|(ty, c)| cell(c).map(|v| (ty.as_str(), v)))
        .collect();
    let at = source
        .event
        .as_ref()
        .and_then(|m| cell(&m.timestamp))
        .and_then(parse_time)
        .unwrap_or(now);
    let grants = source
        .consent
        .values()
        .any(|c| cell(c).and_then(parse_bool) == Some(true));
    stones.check(&ids, at, grants)
}

/// Checks a row against the mapping; returns its typed values (in `types` order) and its id.
#[allow(clippy::type_complexity)]
fn check_row(
    row: &Row,
    source: &RecordSource,
    types: &[(String, ValueType)],
) -> std::result::Result<(Vec<TypedValue>, String), (Option<String>, String)> {
    let cell = |c: &str| row.cells.get(c).and_then(|v| v.as_deref());
    if !source.identifiers.is_empty()
        && source
            .identifiers
            .values()
            .all(|c| cell(c).is_none_or(|v| v.trim().is_empty()))
    {
        let names: Vec<&str> = source.identifiers.values().map(String::as_str).collect();
        return Err((
            Some(names.join(", ")),
            format!(
                "missing id: none of the identifier columns ({}) has a value",
                names.join(", ")
            ),
        ));
    }
    for (channel, column) in &source.consent {
        if let Some(v) = cell(column)
            && !v.trim().is_empty()
            && parse_bool(v).is_none()
        {
            return Err((
                Some(column.clone()),
                format!("consent.{channel}: expected yes/no or true/false, found {v:?}"),
            ));
        }
    }
    let mut values = Vec::with_capacity(types.len());
    for (column, ty) in types {
        let value = match cell(column) {
            None => TypedValue::Null,
            Some(text) => {
                convert_text(text, *ty, true).map_err(|reason| (Some(column.clone()), reason))?
            }
        };
        values.push(value);
    }
    let id = match source
        .event
        .as_ref()
        .and_then(|e| e.message_id.as_deref())
        .and_then(cell)
    {
        Some(id) => id.trim().to_string(),
        None => {
            let mut h = String::new();
            for (k, v) in &row.cells {
                h.push_str(k);
                h.push('\u{1}');
                h.push_str(v.as_deref().unwrap_or(""));
                h.push('\u{2}');
            }
            format!("{:032x}", key_hash(&h))
        }
    };
    Ok((values, id))
}

/// The event a record row stands for.
fn event_of(
    row: &Row,
    source: &RecordSource,
    mapping: &crate::config::RecordEvent,
    source_name: &str,
    record_id: &str,
    typed: &[(String, ValueType)],
    now: i64,
) -> std::result::Result<EventRow<'static>, (Option<String>, String)> {
    let cell = |c: &str| {
        row.cells
            .get(c)
            .and_then(|v| v.as_deref())
            .filter(|v| !v.trim().is_empty())
    };
    let ts_text = cell(&mapping.timestamp).ok_or_else(|| {
        (
            Some(mapping.timestamp.clone()),
            "missing timestamp".to_string(),
        )
    })?;
    let timestamp = parse_time(ts_text).ok_or_else(|| {
        (
            Some(mapping.timestamp.clone()),
            format!("unparseable time {ts_text:?}"),
        )
    })?;
    let name = match (&mapping.name, &mapping.name_column) {
        (Some(name), _) => name.clone(),
        (None, Some(column)) => cell(column)
            .ok_or_else(|| (Some(column.clone()), "missing event name".to_string()))?
            .to_string(),
        (None, None) => unreachable!("config validation requires a name"),
    };
    let mut properties = Map::new();
    for (property, column) in &mapping.properties {
        if let Some(v) = cell(column) {
            let ty = source
                .columns
                .get(column)
                .copied()
                .unwrap_or(ValueType::String);
            let value = match convert_text(v, ty, true).map_err(|r| (Some(column.clone()), r))? {
                TypedValue::Double(d) => {
                    serde_json::Number::from_f64(d).map_or(Value::Null, Value::Number)
                }
                TypedValue::Long(l) => Value::from(l),
                TypedValue::Bool(b) => Value::Bool(b),
                _ => Value::String(v.to_string()),
            };
            properties.insert(property.clone(), value);
        }
    }
    let mut traits = Map::new();
    let mut external = Vec::new();
    let mut user_id = None;
    for (id_type, column) in &source.identifiers {
        if let Some(v) = cell(column) {
            match id_type.as_str() {
                "email" | "phone" => {
                    traits.insert(id_type.clone(), Value::String(v.to_string()));
                }
                "user_id" => user_id = Some(v.to_string()),
                _ => {}
            }
            external.push(serde_json::json!({"id": v, "type": id_type, "collection": "users", "encoding": "none"}));
        }
    }
    let context = serde_json::json!({"traits": traits, "externalIds": external, "records": {"source": source_name, "record_id": record_id}});
    let properties = Value::Object(properties).to_string();
    let typed_values = typed_values(Some(&properties), typed).map_err(|r| (r.field, r.reason))?;
    Ok(EventRow {
        message_id: format!("{source_name}:{record_id}").into(),
        kind: MessageType::Track,
        event: Some(name.into()),
        name: None,
        user_id: user_id.map(Into::into),
        anonymous_id: None,
        previous_id: None,
        group_id: None,
        timestamp,
        received_at: now,
        sent_at: None,
        properties: Some(properties.into()),
        traits: None,
        context: Some(context.to_string().into()),
        integrations: None,
        typed: typed_values,
    })
}

fn record_batch(
    schema: &SchemaRef,
    types: &[(String, ValueType)],
    rows: &[(&Row, Vec<TypedValue>, String)],
    file: &str,
    now: i64,
) -> Result<(RecordBatch, Vec<u128>)> {
    let mut id = StringBuilder::new();
    let mut files = StringBuilder::new();
    let mut line = Int64Builder::new();
    let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut builders: Vec<TypedBuilder> =
        types.iter().map(|(_, t)| TypedBuilder::new(*t)).collect();
    let mut hashes = Vec::with_capacity(rows.len());
    for (row, values, record_id) in rows {
        hashes.push(key_hash(record_id));
        id.append_value(record_id);
        files.append_value(file);
        line.append_value(row.position as i64);
        at.append_value(now);
        for (b, v) in builders.iter_mut().zip(values) {
            b.append(v);
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(files.finish()),
        Arc::new(line.finish()),
        Arc::new(at.finish()),
    ];
    columns.extend(builders.iter_mut().map(TypedBuilder::finish));
    Ok((RecordBatch::try_new(schema.clone(), columns)?, hashes))
}

/// A file is refused as a whole when it cannot match the mapping at all.
fn check_mapping(file: &Path, name: &str, source: &RecordSource, columns: &[String]) -> Result<()> {
    let has = |c: &String| columns.contains(c);
    let missing = |what: &str, c: &str| {
        Error::Input(format!(
            "{}: column `{c}` ({what} of [records.{name}]) is not in the file; its columns are: {}",
            file.display(),
            columns.join(", ")
        ))
    };
    if !source.identifiers.is_empty() && !source.identifiers.values().any(has) {
        let first = source.identifiers.values().next().expect("not empty");
        return Err(missing("an identifier column", first));
    }
    if let Some(event) = &source.event {
        if !has(&event.timestamp) {
            return Err(missing("event.timestamp", &event.timestamp));
        }
        if let Some(c) = &event.name_column
            && !has(c)
        {
            return Err(missing("event.name_column", c));
        }
    }
    Ok(())
}

/// Reads a whole record file into rows of text cells.
fn read_table(path: &Path) -> Result<Table> {
    match Format::of(path)? {
        Format::Csv => read_csv(path),
        Format::JsonLines => {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let mut table = Table {
                columns: vec![],
                rows: vec![],
                rejects: vec![],
                kind: PositionKind::Line,
            };
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(|e| Error::io(path, e))?;
                json_row(&mut table, i as u64 + 1, &line);
            }
            Ok(table)
        }
        Format::Parquet => {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| {
                        Error::Input(format!("{}: not a Parquet file: {e}", path.display()))
                    })?;
            let mut table = Table {
                columns: reader
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
                rows: vec![],
                rejects: vec![],
                kind: PositionKind::Row,
            };
            let mut position = 1;
            for batch in reader.build()? {
                let batch = batch.map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
                let text = batch_to_json_lines(&batch)?;
                for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    json_row(&mut table, position, &String::from_utf8_lossy(line));
                    position += 1;
                }
            }
            Ok(table)
        }
    }
}

fn json_row(table: &mut Table, position: u64, line: &str) {
    if line.trim().is_empty() {
        return;
    }
    match serde_json::from_str::<Map<String, Value>>(line) {
        Err(e) => table
            .rejects
            .push((position, format!("invalid JSON: {e}"), line.to_string())),
        Ok(object) => {
            let mut cells = BTreeMap::new();
            for (k, v) in object {
                if !table.columns.contains(&k) {
                    table.columns.push(k.clone());
                }
                let text = match v {
                    Value::Null => None,
                    Value::String(s) if s.is_empty() => None,
                    Value::String(s) => Some(s),
                    other => Some(other.to_string()),
                };
                cells.insert(k, text);
            }
            table.rows.push(Row {
                position,
                cells,
                raw: line.to_string(),
            });
        }
    }
}

fn read_csv(path: &Path) -> Result<Table> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut table = Table {
        columns: headers.clone(),
        rows: vec![],
        rejects: vec![],
        kind: PositionKind::Line,
    };
    let mut record = csv::StringRecord::new();
    loop {
        let position = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                if record.len() != headers.len() {
                    table.rejects.push((
                        position,
                        format!(
                            "row has {} fields, the header has {}",
                            record.len(),
                            headers.len()
                        ),
                        record.iter().collect::<Vec<_>>().join(","),
                    ));
                    continue;
                }
                let cells = headers
                    .iter()
                    .zip(record.iter())
                    .map(|(h, v)| (h.clone(), (!v.is_empty()).then(|| v.to_string())))
                    .collect();
                table.rows.push(Row {
                    position,
                    cells,
                    raw: record.iter().collect::<Vec<_>>().join(","),
                });
            }
            Err(e) => table
                .rejects
                .push((position, format!("not CSV: {e}"), String::new())),
        }
    }
    Ok(table)
}
