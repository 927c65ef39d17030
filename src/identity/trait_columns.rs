//! The typed trait columns of `profiles`: one column per trait, and per leaf of a nested
//! object (`address.city`), each of the narrowest type that holds every profile's value.
//!
//! An incremental run keeps most profiles as they are stored. Parsing all their traits JSON
//! to type the columns again cost more than the rest of writing the table, so a kept
//! profile's stored cell is reused wherever the column's type provably stays; only the rows
//! holding a trait whose type may change are parsed. The result is what parsing every row
//! gives, which is what a full run writes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use rayon::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::identity::profiles::Profile;
use crate::identity::tables::FIXED;

type Traits = BTreeMap<String, Value>;

/// The trait columns for `kept` stored rows followed by `profiles`, skipping the traits in
/// `skip` and the column names already in `names` (the first field to claim a name gets it).
pub fn build(
    kept: Option<&RecordBatch>,
    profiles: &[Profile],
    skip: &[String],
    mut names: HashSet<String>,
) -> Result<Vec<(Field, ArrayRef)>> {
    let new: Vec<Cow<Traits>> = profiles.iter().map(|p| flat(&p.traits)).collect();
    let mut kinds: BTreeMap<String, Ty> = BTreeMap::new();
    for traits in &new {
        note_kinds(&mut kinds, traits, None);
    }
    let kept = match kept {
        Some(batch) => Kept::read(batch, &kinds)?,
        None => Kept::default(),
    };
    for (field, ty) in &kept.kinds {
        let t = kinds.entry(field.clone()).or_insert(*ty);
        *t = t.join(*ty);
    }
    for (field, (ty, _)) in &kept.reused {
        kinds.entry(field.clone()).or_insert(*ty);
    }
    let mut columns = Vec::new();
    for (field, ty) in kinds {
        if skip.contains(&field) {
            continue;
        }
        let name = column_name(&field);
        if !names.insert(name.clone()) {
            continue;
        }
        let new_values = new.iter().map(|t| t.get(&field));
        columns.push(match kept.reused.get(&field) {
            Some((stored, column)) => {
                debug_assert_eq!(*stored, ty, "a reused column keeps its type");
                let (f, fresh) = ty.column(&name, new_values);
                let old = cast(column, f.data_type())?;
                (f, arrow::compute::concat(&[&old, &fresh])?)
            }
            None => ty.column(&name, kept.values(&field).chain(new_values)),
        });
    }
    Ok(columns)
}

/// The column a trait gets: its own name, unless a fixed or consent column has it.
fn column_name(field: &str) -> String {
    if FIXED.contains(&field) || field.starts_with("consent_") {
        format!("trait_{field}")
    } else {
        field.to_string()
    }
}

/// The trait a stored column holds: the inverse of `column_name`, or `None` for the fixed
/// and consent columns.
fn field_of(column: &str) -> Option<&str> {
    if FIXED.contains(&column) || column.starts_with("consent_") {
        return None;
    }
    Some(match column.strip_prefix("trait_") {
        Some(rest) if FIXED.contains(&rest) || rest.starts_with("consent_") => rest,
        _ => column,
    })
}

/// The kept rows' trait values: stored columns reused as they are, and parsed traits of the
/// rows whose other columns must be typed or rendered again.
#[derive(Default)]
struct Kept {
    /// Per trait: its stored column, whose type stays.
    reused: BTreeMap<String, (Ty, ArrayRef)>,
    /// Per kept row, its flattened traits where it was parsed.
    parsed: Vec<Option<Traits>>,
    /// The types of the parsed traits over the kept rows.
    kinds: BTreeMap<String, Ty>,
}

impl Kept {
    /// Reads `batch` (stored `profiles` rows), knowing the types of the recomputed
    /// profiles' traits (`new`).
    fn read(batch: &RecordBatch, new: &BTreeMap<String, Ty>) -> Result<Kept> {
        let json = crate::identity::sightings::strings(
            batch
                .column_by_name("traits")
                .expect("a stored profiles table has traits"),
        )?;
        let rows = batch.num_rows();
        // A trait literally named `trait_email` would share its column name with the trait
        // `email`; columns cannot tell them apart, so such a workspace parses every row.
        let literal = new.keys().any(|f| f.starts_with("trait_"))
            || (0..rows).any(|r| json.value(r).contains("\"trait_"));
        let mut parse = vec![literal; rows];
        let mut parsed_fields: HashSet<String> = HashSet::new();
        let mut reused = BTreeMap::new();
        if !literal {
            for (f, column) in batch.schema().fields().iter().zip(batch.columns()) {
                let Some(field) = field_of(f.name()) else {
                    continue;
                };
                // Under the type it was written with, a cell is null exactly when the
                // profile lacks the trait.
                if column.null_count() == column.len() {
                    continue;
                }
                let stored = Ty::of_type(column.data_type());
                // The final type joins the kept values' (at most the stored type) with the
                // new ones'. It is the stored type when the new values have it, or, for the
                // types no narrower one joins into, when there are no new values.
                let stays = match (stored, new.get(field)) {
                    (Some(s @ (Ty::Bool | Ty::Long)), None) => Some(s),
                    (Some(s), Some(&n)) if s == n => Some(s),
                    _ => None,
                };
                match stays {
                    Some(ty) => {
                        reused.insert(field.to_string(), (ty, column.clone()));
                    }
                    None => {
                        parsed_fields.insert(field.to_string());
                        for (row, p) in parse.iter_mut().enumerate() {
                            *p |= column.is_valid(row);
                        }
                    }
                }
            }
        }
        let parsed: Vec<Option<Traits>> = (0..rows)
            .into_par_iter()
            .map(|row| {
                if !parse[row] {
                    return Ok(None);
                }
                let traits: Traits = serde_json::from_str(json.value(row))?;
                Ok(Some(flat(&traits).into_owned()))
            })
            .collect::<std::result::Result<_, serde_json::Error>>()
            .map_err(|e| Error::Other(format!("profiles: bad traits: {e}")))?;
        let only = (!literal).then_some(&parsed_fields);
        let mut kinds = BTreeMap::new();
        for traits in parsed.iter().flatten() {
            note_kinds(&mut kinds, traits, only);
        }
        Ok(Kept {
            reused,
            parsed,
            kinds,
        })
    }

    /// Each kept row's value of `field`, for a trait whose column is built from parsed rows.
    fn values<'a>(&'a self, field: &'a str) -> impl Iterator<Item = Option<&'a Value>> + 'a {
        self.parsed
            .iter()
            .map(move |t| t.as_ref().and_then(|t| t.get(field)))
    }
}

/// Joins into `kinds` the type of each value of `traits` (of the fields in `only`, if given).
fn note_kinds(kinds: &mut BTreeMap<String, Ty>, traits: &Traits, only: Option<&HashSet<String>>) {
    for (field, v) in traits {
        if only.is_some_and(|only| !only.contains(field)) {
            continue;
        }
        let ty = Ty::of(v);
        match kinds.get_mut(field) {
            Some(t) => *t = t.join(ty),
            None => {
                kinds.insert(field.clone(), ty);
            }
        }
    }
}

/// Nested traits (`address: {city: …}`) also get a column per leaf, `address.city`, so that
/// segments and SQL reach them without JSON functions.
fn flat(traits: &Traits) -> Cow<'_, Traits> {
    if traits.values().any(Value::is_object) {
        Cow::Owned(flatten(traits))
    } else {
        Cow::Borrowed(traits)
    }
}

/// The traits with every leaf of a nested object added under its dotted path.
fn flatten(traits: &Traits) -> Traits {
    fn walk(prefix: &str, v: &Value, out: &mut Traits) {
        if let Value::Object(map) = v {
            for (k, child) in map {
                walk(&format!("{prefix}.{k}"), child, out);
            }
        } else {
            out.insert(prefix.to_string(), v.clone());
        }
    }
    let mut out = traits.clone();
    for (k, v) in traits {
        if let Value::Object(map) = v {
            for (sub, child) in map {
                walk(&format!("{k}.{sub}"), child, &mut out);
            }
        }
    }
    out
}

/// The column type a trait gets: the narrowest that holds every value seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Long,
    Double,
    Text,
}

impl Ty {
    fn of(v: &Value) -> Ty {
        match v {
            Value::Bool(_) => Ty::Bool,
            Value::Number(n) if n.is_i64() => Ty::Long,
            Value::Number(_) => Ty::Double,
            _ => Ty::Text,
        }
    }

    /// The type a stored column of `data_type` was written as.
    fn of_type(data_type: &DataType) -> Option<Ty> {
        match data_type {
            DataType::Boolean => Some(Ty::Bool),
            DataType::Int64 => Some(Ty::Long),
            DataType::Float64 => Some(Ty::Double),
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => Some(Ty::Text),
            _ => None,
        }
    }

    fn join(self, other: Ty) -> Ty {
        match (self, other) {
            (a, b) if a == b => a,
            (Ty::Long, Ty::Double) | (Ty::Double, Ty::Long) => Ty::Double,
            _ => Ty::Text,
        }
    }

    fn column<'a>(
        self,
        name: &str,
        values: impl Iterator<Item = Option<&'a Value>>,
    ) -> (Field, ArrayRef) {
        let array: ArrayRef = match self {
            Ty::Bool => Arc::new(
                values
                    .map(|v| v.and_then(Value::as_bool))
                    .collect::<BooleanArray>(),
            ),
            Ty::Long => Arc::new(
                values
                    .map(|v| v.and_then(Value::as_i64))
                    .collect::<Int64Array>(),
            ),
            Ty::Double => Arc::new(
                values
                    .map(|v| v.and_then(Value::as_f64))
                    .collect::<Float64Array>(),
            ),
            Ty::Text => {
                let mut b = StringBuilder::new();
                values.for_each(|v| match v {
                    None => b.append_null(),
                    Some(Value::String(s)) => b.append_value(s),
                    Some(other) => b.append_value(other.to_string()),
                });
                Arc::new(b.finish())
            }
        };
        let ty = array.data_type().clone();
        (Field::new(name, ty, true), array)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;
    use serde_json::json;

    use super::*;
    use crate::identity::tables::profiles_batch;

    /// A small deterministic generator (xorshift), so that a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn value(rng: &mut Rng, stable: u64) -> Value {
        // Mostly the field's own type, so that columns often keep their type.
        let kind = if rng.below(10) < 8 {
            stable
        } else {
            rng.below(6)
        };
        match kind {
            0 => json!(rng.below(2) == 1),
            1 => json!(rng.below(1000) as i64 - 500),
            2 => json!(rng.below(1000) as f64 / 8.0 + 0.5),
            3 => json!(format!("v{}", rng.below(50))),
            4 => json!({"city": format!("c{}", rng.below(5)), "zip": rng.below(99)}),
            _ => Value::Null,
        }
    }

    fn profile(rng: &mut Rng, id: usize, fields: &[(&str, u64)]) -> Profile {
        let mut traits = BTreeMap::new();
        for (name, stable) in fields {
            if rng.below(3) > 0 {
                traits.insert(name.to_string(), value(rng, *stable));
            }
        }
        Profile {
            id: format!("p{id}"),
            is_known: false,
            user_id: None,
            email: None,
            phone: None,
            identifiers: 1,
            first_seen: 0,
            last_seen: 0,
            events: 1,
            sources: "web".into(),
            consent: BTreeMap::new(),
            traits,
        }
    }

    /// Stored rows come back from Parquet with other string encodings.
    fn as_read_back(batch: &RecordBatch) -> RecordBatch {
        let columns: Vec<(String, ArrayRef)> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| {
                let c = match c.data_type() {
                    DataType::Utf8 => cast(c, &DataType::Utf8View).unwrap(),
                    _ => c.clone(),
                };
                (f.name().clone(), c)
            })
            .collect();
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn kept_rows_get_the_columns_parsing_every_row_gives() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let skip = vec!["phone".to_string()];
        let mut reused_somewhere = false;
        for round in 0..200 {
            let mut fields = vec![("a", 0), ("b", 1), ("c", 2), ("d", 3), ("address", 4)];
            fields.truncate(1 + rng.below(5) as usize);
            fields.push(("email", 3));
            fields.push(("phone", 3));
            fields.push(("consent_x", 0));
            if round % 7 == 0 {
                fields.push(("trait_email", 1));
            }
            let n = 2 + rng.below(30) as usize;
            let stored: Vec<Profile> = (0..n).map(|i| profile(&mut rng, i, &fields)).collect();
            let (_, stored_rows) = profiles_batch(&stored, &[], &skip).unwrap();
            // The first `k` profiles are kept; the others are recomputed with new traits,
            // drawn from fewer fields so that some types narrow and some traits vanish.
            let k = rng.below(n as u64 + 1) as usize;
            let fewer = &fields[..1 + rng.below(fields.len() as u64) as usize];
            let recomputed: Vec<Profile> = (k..n).map(|i| profile(&mut rng, i, fewer)).collect();
            let kept = as_read_back(&stored_rows.slice(0, k));
            let (_, incremental) =
                profiles_batch(&recomputed, std::slice::from_ref(&kept), &skip).unwrap();
            let everyone: Vec<Profile> = stored[..k].iter().chain(&recomputed).cloned().collect();
            let (_, full) = profiles_batch(&everyone, &[], &skip).unwrap();
            assert_eq!(incremental.schema(), full.schema(), "round {round}");
            for (i, f) in full.schema().fields().iter().enumerate() {
                assert_eq!(
                    incremental.column(i).as_ref(),
                    full.column(i).as_ref(),
                    "round {round}, column {}",
                    f.name()
                );
            }
            let new_kinds = {
                let mut kinds = BTreeMap::new();
                for p in &recomputed {
                    note_kinds(&mut kinds, &flat(&p.traits), None);
                }
                kinds
            };
            reused_somewhere |= !Kept::read(&kept, &new_kinds).unwrap().reused.is_empty();
        }
        assert!(
            reused_somewhere,
            "the generator reaches the reuse of stored columns"
        );
    }

    #[test]
    fn a_literal_trait_prefix_parses_every_row() {
        let stored = vec![{
            let mut rng = Rng(7);
            let mut p = profile(&mut rng, 0, &[]);
            p.traits.insert("trait_events".into(), json!(3));
            p.traits.insert("events".into(), json!("many"));
            p
        }];
        let (_, rows) = profiles_batch(&stored, &[], &[]).unwrap();
        let kept = Kept::read(&as_read_back(&rows), &BTreeMap::new()).unwrap();
        assert!(kept.reused.is_empty());
        assert_eq!(kept.kinds.get("events"), Some(&Ty::Text));
        assert_eq!(kept.kinds.get("trait_events"), Some(&Ty::Long));
        let column = rows.column_by_name("trait_events").unwrap();
        assert_eq!(column.as_string::<i32>().value(0), "many");
    }
}
