//! Printing results for people and programs: `--format table|csv|json` for query results and
//! for command reports. Query results stream batch by batch in csv and json; the table format
//! shows at most [`TABLE_ROW_LIMIT`] rows, like an interactive SQL shell does.

use std::io::Write;

use arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, Result};

/// How a command prints data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum OutputFormat {
    /// Aligned columns for reading.
    #[default]
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// JSON: an array of objects for results, an object for reports.
    Json,
}

/// Rows the table format prints before it stops and says how many more there were.
pub const TABLE_ROW_LIMIT: usize = 10_000;

/// Prints a query result. Returns the number of rows.
pub async fn print_stream(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut rows = 0u64;
    match format {
        OutputFormat::Table => {
            let mut shown: Vec<RecordBatch> = Vec::new();
            let mut shown_rows = 0usize;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                if shown_rows < TABLE_ROW_LIMIT {
                    let take = batch.num_rows().min(TABLE_ROW_LIMIT - shown_rows);
                    shown_rows += take;
                    shown.push(batch.slice(0, take));
                }
            }
            if shown.is_empty() {
                shown.push(RecordBatch::new_empty(stream.schema()));
            }
            let text = arrow::util::pretty::pretty_format_batches(&shown)?;
            writeln!(out, "{text}").map_err(io)?;
            let more = rows - shown_rows as u64;
            if more > 0 {
                writeln!(
                    out,
                    "({rows} rows; {more} not shown: use --format csv or json for all)"
                )
                .map_err(io)?;
            } else {
                writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" }).map_err(io)?;
            }
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut wrote = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                writer.write(&batch)?;
                wrote = true;
            }
            if !wrote {
                writer.write(&RecordBatch::new_empty(stream.schema()))?;
            }
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                writer.write(&batch)?;
            }
            writer.finish()?;
            writeln!(out).map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    Ok(rows)
}

/// Prints a list of records (a report's rows) in the chosen format.
pub fn print_rows<T: Serialize>(
    rows: &[T],
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<()> {
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)
                .map_err(|e| Error::Other(e.to_string()))?;
            writeln!(out).map_err(io)?;
        }
        OutputFormat::Csv | OutputFormat::Table => {
            // Through text, to keep the struct's field order for the columns.
            let text = serde_json::to_string(rows).map_err(|e| Error::Other(e.to_string()))?;
            let records: Vec<Ordered> =
                serde_json::from_str(&text).map_err(|e| Error::Other(e.to_string()))?;
            let columns: Vec<String> = records
                .first()
                .map(|r| r.0.iter().map(|(k, _)| k.clone()).collect())
                .unwrap_or_default();
            let cells: Vec<Vec<String>> = records
                .iter()
                .map(|r| r.0.iter().map(|(_, v)| cell_text(v)).collect())
                .collect();
            if format == OutputFormat::Csv {
                let mut w = csv::Writer::from_writer(&mut *out);
                w.write_record(&columns)
                    .map_err(|e| Error::Other(e.to_string()))?;
                for row in &cells {
                    w.write_record(row)
                        .map_err(|e| Error::Other(e.to_string()))?;
                }
                w.flush().map_err(io)?;
            } else {
                write_aligned(&columns, &cells, out)?;
            }
        }
    }
    Ok(())
}

/// Prints one report: an object in JSON, `key: value` lines as a table, a one-row CSV.
pub fn print_report<T: Serialize>(
    report: &T,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<()> {
    match format {
        OutputFormat::Table => {
            // Through text, to keep the struct's field order (a JSON map would sort the keys).
            let text = serde_json::to_string(report).map_err(|e| Error::Other(e.to_string()))?;
            if let Ok(Ordered(map)) = serde_json::from_str::<Ordered>(&text) {
                let width = map.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                for (k, v) in map {
                    match v {
                        serde_json::Value::Array(items) if !items.is_empty() => {
                            writeln!(out, "{k:width$}:").map_err(io)?;
                            for item in items {
                                writeln!(out, "  {}", cell_text(&item)).map_err(io)?;
                            }
                        }
                        v => writeln!(out, "{k:width$}: {}", cell_text(&v)).map_err(io)?,
                    }
                }
            }
            Ok(())
        }
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, report)
                .map_err(|e| Error::Other(e.to_string()))?;
            writeln!(out).map_err(io)?;
            Ok(())
        }
        OutputFormat::Csv => print_rows(std::slice::from_ref(report), format, out),
    }
}

/// A JSON object's fields in the order they were written.
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(Ordered(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

fn cell_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            items.iter().map(cell_text).collect::<Vec<_>>().join("; ")
        }
        other => other.to_string(),
    }
}

fn write_aligned(columns: &[String], rows: &[Vec<String>], out: &mut dyn Write) -> Result<()> {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(columns)).map_err(io)?;
    for row in rows {
        writeln!(out, "{}", line(row)).map_err(io)?;
    }
    Ok(())
}

fn io(e: std::io::Error) -> Error {
    Error::io("<output>", e)
}

/// Seconds (or any measure) to the millisecond, for reports.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Seconds per step of a long operation, for its report (`phases`).
#[derive(Debug)]
pub struct Phases {
    lap: std::time::Instant,
    done: Vec<(String, f64)>,
}

impl Phases {
    /// Timing from `started` on.
    pub fn since(started: std::time::Instant) -> Phases {
        Phases {
            lap: started,
            done: Vec::new(),
        }
    }

    /// Ends the current step as `name` and starts the next.
    pub fn mark(&mut self, name: &str) {
        self.done
            .push((name.to_string(), round3(self.lap.elapsed().as_secs_f64())));
        self.lap = std::time::Instant::now();
    }

    pub fn into_vec(self) -> Vec<(String, f64)> {
        self.done
    }
}
