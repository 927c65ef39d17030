//! Sightings from `events`: one pass over the table that groups its rows by what they say about
//! who is who. It owns that grouping and nothing downstream of it (the graph reads the result).
//!
//! Almost every event says nothing but its route (user id and anonymous id, or for events with
//! neither, its message id) and its source: page views, product views, orders. Their group is
//! found by the route key every event carries (`schema::route_key`, a 128-bit hash of the
//! route), so the pass hashes no strings for them and compares two integers and a source
//! index per row; a group copies its ids once, when it is created. Only events with traits, a
//! previous id or identifying context (`context.traits`, `context.externalIds`) are grouped by
//! those texts as well. A general `GROUP BY` of the same seven columns in DataFusion spent
//! about 20 CPU-seconds at 71M events (1M people) on hashing and comparing the strings of
//! every row; this pass runs once per scan partition, on every core, and merges at the end.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringViewArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use futures::TryStreamExt;
use hashbrown::HashTable;
use memchr::memmem::Finder;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::identity::sightings::{Kind, Sighting, ints, register};
use crate::storage::schema::{self, ROUTE_HI, ROUTE_LO};

/// Sightings in events: distinct combinations of ids, traits and identifying context, with
/// when they were first and last seen and how many events they stand for. `files` limits the
/// scan to those data files (None: all of them).
pub async fn scan_events(
    ctx: &SessionContext,
    table: &DeltaTable,
    files: Option<Vec<Add>>,
) -> Result<Vec<Sighting>> {
    if !register(ctx, "src_events", table, files).await? {
        return Ok(Vec::new());
    }
    // Tables from before route keys have no such columns; their keys are computed per row,
    // as they are for the older files of a table that has them.
    let table_schema = crate::storage::table_schema(table)?;
    let keys = if table_schema.field_with_name(ROUTE_HI).is_ok() {
        format!(", {ROUTE_HI}, {ROUTE_LO}")
    } else {
        String::new()
    };
    let query = format!(
        "select type, user_id, anonymous_id, previous_id, route_id, source, timestamp, traits, \
         context{keys} from src_events"
    );
    let streams = ctx.sql(&query).await?.execute_stream_partitioned().await?;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(fold(stream)))
        .collect();
    let mut merged: Option<Groups> = None;
    for task in tasks {
        let groups = task
            .await
            .map_err(|e| Error::Other(format!("scanning events for identities: {e}")))??;
        match &mut merged {
            None => merged = Some(groups),
            Some(m) => m.absorb(groups),
        }
    }
    Ok(merged.map(Groups::into_sightings).unwrap_or_default())
}

/// Groups every event of one scan partition.
async fn fold(mut stream: SendableRecordBatchStream) -> Result<Groups> {
    let mut groups = Groups::default();
    let identifying = [Finder::new(b"\"traits\""), Finder::new(b"\"externalIds\"")];
    while let Some(batch) = stream.try_next().await? {
        groups.add_batch(&batch, &identifying)?;
    }
    Ok(groups)
}

/// The part of a group's key beyond route and source: only events that carry traits, a
/// previous id or identifying context have one.
#[derive(Debug, PartialEq, Eq)]
struct Extra {
    previous_id: Option<Box<str>>,
    traits: Option<Box<str>>,
    context: Option<Box<str>>,
}

/// A group's texts, copied once when the group is created.
struct Texts {
    user_id: Option<Box<str>>,
    anonymous_id: Option<Box<str>>,
    route_id: Option<Box<str>>,
    extra: Option<Extra>,
}

/// When a group's events were first and last seen, and how many there were.
#[derive(Clone, Copy)]
struct Seen {
    first: i64,
    last: i64,
    count: i64,
}

impl Seen {
    fn at(at: i64) -> Seen {
        Seen {
            first: at,
            last: at,
            count: 1,
        }
    }

    fn merge(&mut self, other: Seen) {
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
        self.count += other.count;
    }
}

/// Events with the same route, source and extra: one sighting. Kept small (the texts live
/// beside the table), so that a lookup touches one entry's memory for most events.
struct Entry {
    hash: u64,
    route: (i64, i64),
    source: u16,
    /// Whether the texts hold an extra: kept here so that plain lookups never read the texts.
    has_extra: bool,
    /// Index of the group's texts in its shard.
    texts: u32,
    seen: Seen,
}

/// Groups are spread over shards by hash, so that the groups of two scan partitions merge
/// shard by shard on every core.
const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    table: HashTable<Entry>,
    texts: Vec<Texts>,
}

/// The groups of a set of events, and the source names their `source` indexes.
struct Groups {
    shards: Vec<Shard>,
    sources: Vec<Box<str>>,
}

impl Default for Groups {
    fn default() -> Groups {
        Groups {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            sources: Vec::new(),
        }
    }
}

/// The shard of a group, from bits the tables themselves do not use: hashbrown places an
/// entry by the low bits and tags it with the top seven, and a shard taken from the top bits
/// left its tags nearly alike, so that most probes loaded a wrong entry (a cache miss) first.
///
/// Taken from the route key alone: the hash also covers the source's index, which differs
/// between scan partitions, and two partitions' groups of one key must meet in one shard.
fn shard_of(route: (i64, i64)) -> usize {
    ((route.1 as u64) >> 48) as usize % SHARDS
}

/// Consecutive plain rows (no extra) of one route and source, from `row` on.
struct Run {
    row: usize,
    route: (i64, i64),
    source: u16,
    seen: Seen,
}

/// One row's borrowed key parts.
struct RowKey<'a> {
    route: (i64, i64),
    source: u16,
    extra: Option<[Option<&'a str>; 3]>,
}

impl RowKey<'_> {
    fn hash(&self) -> u64 {
        match self.extra {
            // The route key is already a uniform hash of the ids.
            None => {
                (self.route.1 as u64) ^ (self.source as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            }
            Some(parts) => {
                use std::hash::{BuildHasher, Hash, Hasher};
                let mut h = foldhash::fast::FixedState::default().build_hasher();
                self.route.hash(&mut h);
                self.source.hash(&mut h);
                parts.hash(&mut h);
                h.finish()
            }
        }
    }
}

impl Extra {
    fn parts(&self) -> [Option<&str>; 3] {
        [
            self.previous_id.as_deref(),
            self.traits.as_deref(),
            self.context.as_deref(),
        ]
    }
}

impl Shard {
    /// Counts `seen` into the group of `key`; `texts` makes the group's texts when it is new.
    fn add(&mut self, hash: u64, key: &RowKey, seen: Seen, texts: impl FnOnce() -> Texts) {
        if !self.count(hash, key, seen) {
            self.insert(hash, key.route, key.source, seen, texts());
        }
    }

    /// Counts `seen` into the group of `key`, if it has one.
    fn count(&mut self, hash: u64, key: &RowKey, seen: Seen) -> bool {
        let known = &self.texts;
        let found = self.table.find_mut(hash, |e| {
            e.hash == hash
                && e.route == key.route
                && e.source == key.source
                && e.has_extra == key.extra.is_some()
                && key.extra.is_none_or(|parts| {
                    known[e.texts as usize].extra.as_ref().map(Extra::parts) == Some(parts)
                })
        });
        found.map(|e| e.seen.merge(seen)).is_some()
    }

    fn insert(&mut self, hash: u64, route: (i64, i64), source: u16, seen: Seen, texts: Texts) {
        let entry = Entry {
            hash,
            route,
            source,
            has_extra: texts.extra.is_some(),
            texts: self.texts.len() as u32,
            seen,
        };
        self.texts.push(texts);
        self.table.insert_unique(hash, entry, |e| e.hash);
    }

    /// Adds the groups of the same shard of another partition, whose sources `remap` maps
    /// to this one's.
    fn absorb(&mut self, other: Shard, remap: &[u16]) {
        let mut other_texts: Vec<Option<Texts>> = other.texts.into_iter().map(Some).collect();
        for e in other.table {
            let texts = other_texts[e.texts as usize]
                .take()
                .expect("one entry per texts");
            let source = remap[e.source as usize];
            // The hash covers the source index, which may differ between partitions.
            let key = RowKey {
                route: e.route,
                source,
                extra: texts.extra.as_ref().map(Extra::parts),
            };
            let hash = key.hash();
            if !self.count(hash, &key, e.seen) {
                self.insert(hash, e.route, source, e.seen, texts);
            }
        }
    }
}

/// A new group's texts: its user, anonymous and route ids, and its extra.
fn texts(ids: [Option<&str>; 3], extra: Option<[Option<&str>; 3]>) -> Texts {
    let own = |s: Option<&str>| s.map(Box::from);
    Texts {
        user_id: own(ids[0]),
        anonymous_id: own(ids[1]),
        route_id: own(ids[2]),
        extra: extra.map(|[previous_id, traits, context]| Extra {
            previous_id: own(previous_id),
            traits: own(traits),
            context: own(context),
        }),
    }
}

/// The text of `row` in `col`, None when null.
fn get(col: &StringViewArray, row: usize) -> Option<&str> {
    (!col.is_null(row)).then(|| col.value(row))
}

/// A string column of any string encoding, as views.
fn views(col: &ArrayRef) -> Result<StringViewArray> {
    Ok(cast(col, &DataType::Utf8View)?.as_string_view().clone())
}

/// Remembers a test of the last text seen in a column. Two equal views hold equal text (the
/// text itself when short, else the same bytes of the same buffer), and values decoded from
/// a Parquet dictionary share their views, so repeated values are tested once.
struct LastView<T> {
    view: u128,
    value: Option<T>,
}

impl<T: Copy> LastView<T> {
    fn new() -> LastView<T> {
        LastView {
            view: 0,
            value: None,
        }
    }

    fn get(&mut self, col: &StringViewArray, row: usize, test: impl FnOnce(&str) -> T) -> T {
        let view = col.views()[row];
        match self.value {
            Some(v) if view == self.view => v,
            _ => {
                let v = test(col.value(row));
                (self.view, self.value) = (view, Some(v));
                v
            }
        }
    }
}

impl Groups {
    fn source_index(&mut self, name: &str) -> u16 {
        match self.sources.iter().position(|s| &**s == name) {
            Some(i) => i as u16,
            None => {
                self.sources.push(name.into());
                (self.sources.len() - 1) as u16
            }
        }
    }

    fn add_batch(&mut self, batch: &RecordBatch, identifying: &[Finder; 2]) -> Result<()> {
        let text: Vec<StringViewArray> = [0, 1, 2, 3, 4, 5, 7, 8]
            .iter()
            .map(|&i| views(batch.column(i)))
            .collect::<Result<_>>()?;
        let [
            kind,
            user,
            anon,
            previous,
            route_id,
            source,
            traits,
            context,
        ] = &text[..]
        else {
            unreachable!("eight text columns")
        };
        let time = ints(batch.column(6))?;
        let keys = if batch.num_columns() > 9 {
            Some((ints(batch.column(9))?, ints(batch.column(10))?))
        } else {
            None
        };
        let mut last_source = LastView::new();
        let mut last_context = LastView::new();
        // Events of one route come in runs (a visit's page views, an order's lines): a run of
        // rows with the same plain key is counted here and added to its group once, which
        // spares the table lookup (a cache miss) for most rows.
        let mut run: Option<Run> = None;
        // The ids are read only where needed: for most rows the route key stands for them.
        let ids = |row: usize| [get(user, row), get(anon, row), get(route_id, row)];
        for row in 0..batch.num_rows() {
            let route_key = match &keys {
                Some((hi, lo)) if !hi.is_null(row) && !lo.is_null(row) => {
                    (hi.value(row), lo.value(row))
                }
                _ => {
                    let [user_id, anonymous_id, route] = ids(row);
                    schema::route_key(user_id, anonymous_id, route)
                }
            };
            let source_id = last_source.get(source, row, |name| self.source_index(name));
            // Group events' traits describe the group, not the person.
            let traits = get(traits, row).filter(|t| *t != "{}" && kind.value(row) != "group");
            let identifies = !context.is_null(row)
                && last_context.get(context, row, |c| {
                    identifying.iter().any(|f| f.find(c.as_bytes()).is_some())
                });
            let context = identifies.then(|| context.value(row));
            let previous_id = get(previous, row);
            let seen = Seen::at(time.value(row));
            let extra = (previous_id.is_some() || traits.is_some() || context.is_some())
                .then_some([previous_id, traits, context]);
            if extra.is_none() {
                if let Some(r) = &mut run
                    && r.route == route_key
                    && r.source == source_id
                {
                    r.seen.merge(seen);
                    continue;
                }
                let next = Run {
                    row,
                    route: route_key,
                    source: source_id,
                    seen,
                };
                if let Some(r) = run.replace(next) {
                    self.add_run(&r, ids);
                }
                continue;
            }
            let key = RowKey {
                route: route_key,
                source: source_id,
                extra,
            };
            let hash = key.hash();
            self.shards[shard_of(key.route)].add(hash, &key, seen, || texts(ids(row), extra));
        }
        if let Some(r) = run {
            self.add_run(&r, ids);
        }
        Ok(())
    }

    /// Adds a run of plain rows to its group; `ids` reads the batch's user, anonymous and
    /// route ids of a row, taken at the run's first row when the group is new.
    fn add_run<'a>(&mut self, r: &Run, ids: impl Fn(usize) -> [Option<&'a str>; 3]) {
        let key = RowKey {
            route: r.route,
            source: r.source,
            extra: None,
        };
        let hash = key.hash();
        self.shards[shard_of(key.route)].add(hash, &key, r.seen, || texts(ids(r.row), None));
    }

    /// Adds the groups of another partition, shard by shard on every core.
    fn absorb(&mut self, other: Groups) {
        use rayon::prelude::*;
        let remap: Vec<u16> = other.sources.iter().map(|s| self.source_index(s)).collect();
        self.shards
            .par_iter_mut()
            .zip(other.shards)
            .for_each(|(mine, theirs)| mine.absorb(theirs, &remap));
    }

    /// The groups as sightings, made on every core.
    fn into_sightings(self) -> Vec<Sighting> {
        use rayon::prelude::*;
        let sources = &self.sources;
        self.shards
            .into_par_iter()
            .flat_map_iter(|shard| {
                let mut texts: Vec<Option<Texts>> = shard.texts.into_iter().map(Some).collect();
                shard.table.into_iter().map(move |e| {
                    let t = texts[e.texts as usize].take().expect("one entry per texts");
                    sighting(&sources[e.source as usize], t, &e)
                })
            })
            .collect()
    }
}

/// The sighting of one group.
fn sighting(source: &str, t: Texts, e: &Entry) -> Sighting {
    let (previous_id, traits, context) = match t.extra {
        Some(x) => (x.previous_id, x.traits, x.context),
        None => (None, None, None),
    };
    let (context_traits, external_ids) = match context.as_deref() {
        Some(text) => identifying_context(text),
        None => (None, Vec::new()),
    };
    Sighting {
        kind: Kind::Event,
        source: source.to_string(),
        user_id: t.user_id.map(String::from),
        anonymous_id: t.anonymous_id.map(String::from),
        previous_id: previous_id.map(String::from),
        message_id: t.route_id.map(String::from),
        external_ids,
        traits: traits.map(String::from),
        context_traits,
        consent: None,
        first_seen: e.seen.first,
        last_seen: e.seen.last,
        count: e.seen.count,
    }
}

/// `context.traits` (as text) and `context.externalIds` (as (type, id) pairs) of a context.
pub fn identifying_context(text: &str) -> (Option<String>, Vec<(String, String)>) {
    let Ok(Value::Object(context)) = serde_json::from_str::<Value>(text) else {
        return (None, Vec::new());
    };
    let traits = match context.get("traits") {
        Some(Value::Object(t)) if !t.is_empty() => Some(Value::Object(t.clone()).to_string()),
        _ => None,
    };
    let mut ids = Vec::new();
    if let Some(Value::Array(list)) = context.get("externalIds") {
        for item in list {
            let (Some(ty), Some(id)) = (item.get("type"), item.get("id")) else {
                continue;
            };
            let id = match id {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            if let Value::String(ty) = ty {
                ids.push((ty.clone(), id));
            }
        }
    }
    (traits, ids)
}
