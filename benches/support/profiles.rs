//! Profiles for the benchmarks that need a `profiles` table but not identity resolution: `n`
//! generated people with e-mail, phone, names, country, zip and ads consent.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use tribe::storage::{TableSpec, WriteMode};
use tribe::workspace::Workspace;

const FIRST: &[&str] = &[
    "Ana", " Ben", "Cleo ", "DAVID", "Emma", "Finn", "Greta", "Hugo",
];
const LAST: &[&str] = &[
    "Lopez", "Müller", "O'Neil", "Smith", "Novak", "Rossi", "Kim",
];
const COUNTRY: &[&str] = &["DE", "AT", "CH", "US", "GB", "FR"];

/// The e-mail of profile `i` (mixed case and Gmail addresses, for the normalisers).
pub fn email(i: usize) -> String {
    format!(
        "{}.{}{i}@{}",
        FIRST[i % FIRST.len()].trim(),
        LAST[i % LAST.len()],
        if i.is_multiple_of(3) {
            "GMail.com"
        } else {
            "example.com"
        }
    )
}

/// Profiles `0..n`; the first `members` are known (the segment) and agreed to ads, except the
/// `withdrawn`; the others never stated consent.
pub fn profiles(n: usize, members: usize, withdrawn: &dyn Fn(usize) -> bool) -> RecordBatch {
    let text = |f: &dyn Fn(usize) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from((0..n).map(f).collect::<Vec<_>>()))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("is_known", DataType::Boolean, false),
        Field::new("email", DataType::Utf8, true),
        Field::new("phone", DataType::Utf8, true),
        Field::new("first_name", DataType::Utf8, true),
        Field::new("last_name", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("zip", DataType::Utf8, true),
        Field::new("consent_ads", DataType::Boolean, true),
    ]));
    let consent: BooleanArray = (0..n)
        .map(|i| (i < members).then(|| !withdrawn(i)))
        .collect();
    RecordBatch::try_new(
        schema,
        vec![
            text(&|i| Some(format!("p_{i:012}"))),
            Arc::new(BooleanArray::from(
                (0..n).map(|i| i < members).collect::<Vec<_>>(),
            )),
            text(&|i| Some(email(i))),
            text(&|i| (i % 5 != 0).then(|| format!("+49151{:08}", i))),
            text(&|i| Some(FIRST[i % FIRST.len()].to_string())),
            text(&|i| Some(LAST[(i / 7) % LAST.len()].to_string())),
            text(&|i| Some(COUNTRY[i % COUNTRY.len()].to_string())),
            text(&|i| Some(format!("{:05}", 10000 + i % 89999))),
            Arc::new(consent),
        ],
    )
    .unwrap()
}

pub async fn write_profiles(ws: &Workspace, batch: RecordBatch) {
    let spec = TableSpec {
        name: "profiles".into(),
        path: "profiles".into(),
        schema: batch.schema(),
        partition_columns: vec![],
    };
    let slices: Vec<RecordBatch> = (0..batch.num_rows())
        .step_by(100_000)
        .map(|o| batch.slice(o, 100_000.min(batch.num_rows() - o)))
        .collect();
    ws.storage
        .write(&spec, slices, WriteMode::Replace)
        .await
        .unwrap();
}
