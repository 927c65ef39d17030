//! Incremental resolution: which stored profiles the new sightings reach, and what an
//! incremental run keeps of the stored tables.
//!
//! A profile is affected when a new sighting carries one of its identifiers, or when it is
//! joined to an affected profile by a refused link (the over-merging rules decide per raw
//! component, so a refused link's two sides are decided together). The run loads the stored
//! sightings of the affected profiles only, by their anchors, recomputes those profiles from
//! them and the new sightings, and replaces their rows in the output tables; every other row
//! stays as it was. Because every sighting of an affected component is loaded, the result is
//! what a full run computes (a test compares the two).

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::Result;
use crate::identity::graph::Graph;
use crate::identity::normalize::Normalisers;
use crate::identity::sightings::{Sighting, strings};
use crate::storage::conform;

/// The identifiers a run looks up, by type.
pub type Wanted = HashMap<String, HashSet<String>>;

/// A set of profile ids or anchors (hashed with foldhash: it is probed once per stored row).
pub type Ids = HashSet<String>;

/// What an incremental run starts from.
pub struct Prior<'a> {
    /// The profiles whose rows this run replaces.
    pub affected: HashSet<String>,
    /// Every identifier of those profiles, as `type:value` (the anchors of their sightings).
    pub anchors: HashSet<String>,
    /// Every profile id in use: a new profile must not take one.
    pub taken: crate::identity::assign::Taken<'a>,
}

/// The anchor text of an identifier.
pub fn anchor(ty: &str, value: &str) -> String {
    format!("{ty}:{value}")
}

/// The affected profiles of `identities` (the stored table's rows, conformed to its schema):
/// those holding a `wanted` identifier, closed over the refused links of `conflicts` (pairs
/// of profile ids).
pub fn prior<'a>(
    identities: &'a [RecordBatch],
    wanted: &Wanted,
    conflicts: &[(String, String)],
) -> Result<Prior<'a>> {
    let columns = |b: &'a RecordBatch| -> [&'a arrow::array::StringArray; 3] {
        [0, 1, 2].map(|i| b.column(i).as_string::<i32>())
    };
    // The ids in use and the profiles reached are two passes, one per core.
    let (taken, mut affected) = std::thread::scope(|scope| {
        let taken = scope.spawn(|| {
            let mut taken = crate::identity::assign::Taken::default();
            for b in identities {
                let profile = columns(b)[2];
                for row in 0..b.num_rows() {
                    taken.insert(profile.value(row));
                }
            }
            taken
        });
        let mut affected: HashSet<String> = HashSet::new();
        for b in identities {
            let [ty, value, profile] = columns(b);
            for row in 0..b.num_rows() {
                if wanted
                    .get(ty.value(row))
                    .is_some_and(|values| values.contains(value.value(row)))
                {
                    affected.insert(profile.value(row).to_string());
                }
            }
        }
        let taken = taken
            .join()
            .expect("collecting the profile ids in use panicked");
        (taken, affected)
    });
    let mut refused: HashMap<&str, Vec<&str>> = HashMap::new();
    for (a, b) in conflicts {
        refused.entry(a).or_default().push(b);
        refused.entry(b).or_default().push(a);
    }
    let mut queue: Vec<String> = affected.iter().cloned().collect();
    while let Some(p) = queue.pop() {
        for &other in refused.get(p.as_str()).into_iter().flatten() {
            if affected.insert(other.to_string()) {
                queue.push(other.to_string());
            }
        }
    }
    let mut anchors = HashSet::new();
    for b in identities {
        let [ty, value, profile] = columns(b);
        for row in 0..b.num_rows() {
            if affected.contains(profile.value(row)) {
                anchors.insert(anchor(ty.value(row), value.value(row)));
            }
        }
    }
    Ok(Prior {
        affected,
        anchors,
        taken,
    })
}

/// Stored rows, cast to their table's schema (a table read back may use other string
/// encodings than it is written in), split by whether they belong to an affected profile.
pub struct Split {
    /// Rows in which none of the key columns holds an affected profile id: they stay.
    pub kept: Vec<RecordBatch>,
    /// The others: what the run recomputed.
    pub replaced: Vec<RecordBatch>,
}

/// Splits `batches` by whether one of `columns` holds an affected profile id.
pub fn split(
    batches: &[RecordBatch],
    columns: &[&str],
    affected: &Ids,
    schema: &SchemaRef,
) -> Result<Split> {
    let mut out = Split {
        kept: Vec::with_capacity(batches.len()),
        replaced: Vec::with_capacity(batches.len()),
    };
    // Filtered before they are conformed: filtering string views copies the views only, and
    // each row's text is then copied once, into the part it belongs to.
    for b in batches {
        let keep = mask(b, columns, affected)?;
        let kept = arrow::compute::filter_record_batch(b, &keep)?;
        out.kept.push(conform(&kept, schema)?);
        let replace = arrow::compute::not(&keep)?;
        let replaced = arrow::compute::filter_record_batch(b, &replace)?;
        out.replaced.push(conform(&replaced, schema)?);
    }
    Ok(out)
}

/// Whether `old` (any string encodings) and `new` (in `schema`) hold the same rows in any
/// order: then a run recomputed what a table holds, and it need not be written again.
pub fn same_rows(old: &[RecordBatch], new: &[RecordBatch], schema: &SchemaRef) -> Result<bool> {
    let count = |bs: &[RecordBatch]| bs.iter().map(RecordBatch::num_rows).sum::<usize>();
    if count(old) != count(new) {
        return Ok(false);
    }
    let conformed = |bs: &[RecordBatch]| -> Result<Vec<RecordBatch>> {
        bs.iter().map(|b| conform(b, schema)).collect()
    };
    let (old, new) = (conformed(old)?, conformed(new)?);
    if sums(&old, schema)? != sums(&new, schema)? {
        return Ok(false);
    }
    let fields: Vec<SortField> = schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let sorted = |bs: &[RecordBatch]| -> Result<Vec<Vec<u8>>> {
        let mut rows = Vec::new();
        for b in bs {
            let converted = converter.convert_columns(b.columns())?;
            rows.extend(converted.iter().map(|r| r.as_ref().to_vec()));
        }
        rows.sort_unstable();
        Ok(rows)
    };
    Ok(sorted(&old)? == sorted(&new)?)
}

/// A look before sorting rows: the wrapping sum of each integer and time column, which rows
/// in any order share. A recomputed profile seen again has a later `last_seen`, so a changed
/// table is told apart here, without converting and sorting its rows. `batches` are in
/// `schema`.
fn sums(batches: &[RecordBatch], schema: &SchemaRef) -> Result<Vec<i64>> {
    let mut sums = vec![0i64; schema.fields().len()];
    for b in batches {
        for (i, f) in schema.fields().iter().enumerate() {
            if matches!(f.data_type(), DataType::Int64 | DataType::Timestamp(..)) {
                let values = crate::identity::sightings::ints(b.column(i))?;
                sums[i] = values
                    .iter()
                    .flatten()
                    .fold(sums[i], |sum, v| sum.wrapping_add(v));
            }
        }
    }
    Ok(sums)
}

fn mask(batch: &RecordBatch, columns: &[&str], affected: &Ids) -> Result<BooleanArray> {
    let mut held: Option<BooleanArray> = None;
    for c in columns {
        let column = batch
            .column_by_name(c)
            .expect("the table has its key column");
        let here = members(column, affected);
        held = Some(match held {
            None => here,
            Some(before) => arrow::compute::or(&before, &here)?,
        });
    }
    let held = held.expect("a key column");
    Ok(arrow::compute::not(&held)?)
}

/// Whether each value of a text column (in any string encoding) is in `set`; false for nulls.
fn members(array: &arrow::array::ArrayRef, set: &Ids) -> BooleanArray {
    let contains = |v: Option<&str>| Some(v.is_some_and(|v| set.contains(v)));
    match array.data_type() {
        DataType::Utf8View => array.as_string_view().iter().map(contains).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(contains).collect(),
        _ => array.as_string::<i32>().iter().map(contains).collect(),
    }
}

/// The rows of `batch` in which none of `columns` holds an affected profile id.
pub fn keep_rows(batch: &RecordBatch, columns: &[&str], affected: &Ids) -> Result<RecordBatch> {
    Ok(arrow::compute::filter_record_batch(
        batch,
        &mask(batch, columns, affected)?,
    )?)
}

/// The (profile, other profile) pairs of stored `identity_conflicts` rows.
pub fn profile_pairs(conflicts: &[RecordBatch]) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for b in conflicts {
        let column = |name: &str| strings(b.column_by_name(name).expect("conflicts column"));
        let (a, o) = (column("profile_id")?, column("other_profile_id")?);
        for row in 0..b.num_rows() {
            pairs.push((a.value(row).to_string(), o.value(row).to_string()));
        }
    }
    Ok(pairs)
}

/// The identifiers whose stored profiles the new sightings reach: every identifier of their
/// graph, and a user id or anonymous id also under the other type. An alias's previous id is
/// a user id when one is known by that value, else an anonymous id, so a new user id can
/// change what an old alias links, and an alias's previous id may name an old user id.
pub fn wanted(new: &Graph, sightings: &[Sighting], normalisers: &Normalisers) -> Wanted {
    let mut wanted = Wanted::new();
    let mut add = |ty: &str, value: &str| {
        wanted
            .entry(ty.to_string())
            .or_default()
            .insert(value.to_string());
    };
    for node in &new.nodes {
        let ty = new.types[node.ty as usize].as_str();
        add(ty, &node.value);
        let other = match ty {
            "user_id" => "anonymous_id",
            "anonymous_id" => "user_id",
            _ => continue,
        };
        if let Ok(v) = normalisers.normalise(other, &node.value) {
            add(other, &v);
        }
    }
    for previous in sightings.iter().filter_map(|s| s.previous_id.as_deref()) {
        for ty in ["user_id", "anonymous_id"] {
            if let Ok(v) = normalisers.normalise(ty, previous) {
                add(ty, &v);
            }
        }
    }
    wanted
}

/// A SQL function `name(text) -> boolean`: whether the text is one of `set`. As a filter it
/// runs inside the Parquet scan, before the other columns of a row are decoded.
pub fn member_of(name: &str, set: Arc<HashSet<String>>) -> ScalarUDF {
    ScalarUDF::new_from_impl(MemberOf {
        name: name.to_string(),
        set,
        signature: Signature::string(1, Volatility::Immutable),
    })
}

#[derive(Debug)]
struct MemberOf {
    name: String,
    set: Arc<HashSet<String>>,
    signature: Signature,
}

// One function per set: equal when it is the same set.
impl PartialEq for MemberOf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.set, &other.set)
    }
}

impl Eq for MemberOf {}

impl std::hash::Hash for MemberOf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        Arc::as_ptr(&self.set).hash(state);
    }
}

impl ScalarUDFImpl for MemberOf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(Arc::new(members(&array, &self.set))))
    }
}
