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
    let out = merged.map(Groups::into_sightings).unwrap_or_default();
    Ok(out)
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

/// Events with the same route, source and extra: one sighting. Kept small (the texts live
/// beside the table), so that a lookup touches one entry's memory for most events.
struct Entry {
    hash: u64,
    route: (i64, i64),
    source: u16,
    has_extra: bool,
    /// Index of the group's texts in its shard.
    texts: u32,
    first_seen: i64,
    last_seen: i64,
    count: i64,
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

/// The shard of a hash, from bits the tables themselves do not use: hashbrown places an
/// entry by the low bits and tags it with the top seven, and a shard taken from the top bits
/// left its tags nearly alike, so that most probes loaded a wrong entry (a cache miss) first.
fn shard_of(hash: u64) -> usize {
    (hash >> 48) as usize % SHARDS
}

/// Consecutive plain rows (no extra) of one route and source, from `row` on.
struct Run {
    row: usize,
    route: (i64, i64),
    source: u16,
    first_seen: i64,
    last_seen: i64,
    count: i64,
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
    /// Counts `count` events of `key` seen from `first` to `last` (`seen`); `texts` makes the
    /// group's texts when it is new.
    fn add(
        &mut self,
        hash: u64,
        key: &RowKey,
        seen: (i64, i64, i64),
        texts: impl FnOnce() -> Texts,
    ) {
        let (first, last, count) = seen;
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
        match found {
            Some(e) => {
                e.first_seen = e.first_seen.min(first);
                e.last_seen = e.last_seen.max(last);
                e.count += count;
            }
            None => {
                self.texts.push(texts());
                let entry = Entry {
                    hash,
                    route: key.route,
                    source: key.source,
                    has_extra: key.extra.is_some(),
                    texts: (self.texts.len() - 1) as u32,
                    first_seen: first,
                    last_seen: last,
                    count,
                };
                self.table.insert_unique(hash, entry, |e| e.hash);
            }
        }
    }

    /// Adds the groups of the same shard of another partition, whose sources `remap` maps
    /// to this one's.
    fn absorb(&mut self, other: Shard, remap: &[u16]) {
        let mut other_texts: Vec<Option<Texts>> = other.texts.into_iter().map(Some).collect();
        for mut e in other.table {
            e.source = remap[e.source as usize];
            let texts = other_texts[e.texts as usize]
                .take()
                .expect("one entry per texts");
            let parts = texts.extra.as_ref().map(Extra::parts);
            // The hash covers the source index, which may differ between partitions.
            e.hash = RowKey {
                route: e.route,
                source: e.source,
                extra: parts,
            }
            .hash();
            let known = &self.texts;
            let found = self.table.find_mut(e.hash, |h| {
                h.hash == e.hash
                    && h.route == e.route
                    && h.source == e.source
                    && h.has_extra == e.has_extra
                    && known[h.texts as usize].extra == texts.extra
            });
            match found {
                Some(h) => {
                    h.first_seen = h.first_seen.min(e.first_seen);
                    h.last_seen = h.last_seen.max(e.last_seen);
                    h.count += e.count;
                }
                None => {
                    self.texts.push(texts);
                    e.texts = (self.texts.len() - 1) as u32;
                    self.table.insert_unique(e.hash, e, |h| h.hash);
                }
            }
        }
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
        for row in 0..batch.num_rows() {
            let (user_id, anonymous_id, route) =
                (get(user, row), get(anon, row), get(route_id, row));
            let route_key = match &keys {
                Some((hi, lo)) if !hi.is_null(row) && !lo.is_null(row) => {
                    (hi.value(row), lo.value(row))
                }
                _ => schema::route_key(user_id, anonymous_id, route),
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
            let at = time.value(row);
            let extra = (previous_id.is_some() || traits.is_some() || context.is_some())
                .then_some([previous_id, traits, context]);
            if extra.is_none() {
                if let Some(r) = &mut run
                    && r.route == route_key
                    && r.source == source_id
                {
                    r.first_seen = r.first_seen.min(at);
                    r.last_seen = r.last_seen.max(at);
                    r.count += 1;
                    continue;
                }
                if let Some(r) = run.take() {
                    self.add_run(&r, [user, anon, route_id]);
                }
                run = Some(Run {
                    row,
                    route: route_key,
                    source: source_id,
                    first_seen: at,
                    last_seen: at,
                    count: 1,
                });
                continue;
            }
            let key = RowKey {
                route: route_key,
                source: source_id,
                extra,
            };
            let hash = key.hash();
            let own = |s: Option<&str>| s.map(Box::from);
            let seen = (at, at, 1);
            self.shards[shard_of(hash)].add(hash, &key, seen, || Texts {
                user_id: own(user_id),
                anonymous_id: own(anonymous_id),
                route_id: own(route),
                extra: key.extra.map(|[previous_id, traits, context]| Extra {
                    previous_id: own(previous_id),
                    traits: own(traits),
                    context: own(context),
                }),
            });
        }
        if let Some(r) = run.take() {
            self.add_run(&r, [user, anon, route_id]);
        }
        Ok(())
    }

    /// Adds a run of plain rows to its group; `ids` are the batch's user, anonymous and route
    /// id columns, read at the run's first row when the group is new.
    fn add_run(&mut self, r: &Run, ids: [&StringViewArray; 3]) {
        let key = RowKey {
            route: r.route,
            source: r.source,
            extra: None,
        };
        let hash = key.hash();
        let own = |col: &StringViewArray| get(col, r.row).map(Box::from);
        let seen = (r.first_seen, r.last_seen, r.count);
        self.shards[shard_of(hash)].add(hash, &key, seen, || Texts {
            user_id: own(ids[0]),
            anonymous_id: own(ids[1]),
            route_id: own(ids[2]),
            extra: None,
        });
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
                let entries: Vec<Entry> = shard.table.into_iter().collect();
                entries.into_iter().map(move |e| {
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
        first_seen: e.first_seen,
        last_seen: e.last_seen,
        count: e.count,
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
