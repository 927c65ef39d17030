//! Identity resolution: turns events and records into one profile per person. It owns the
//! identity tables (`identity_links`, `identities`, `profiles`, `profile_consent`, `profile_keys`,
//! `profile_routes`, `identity_conflicts`, `profile_merges`, `resolve_runs`) and the
//! `profile_events` view.
//!
//! A run reads sightings (identifiers seen together) from the data that is new since the last
//! run, adds them to the stored ones, and rebuilds the graph from all of them: normalise,
//! link, connected components under the over-merging rules, stable ids, merged traits. The
//! graph is small next to the events, so rebuilding it is cheap, and it is what makes the
//! result of an incremental run equal that of a full one.

pub mod assign;
pub mod evaluate;
pub mod graph;
pub mod normalize;
pub mod profiles;
pub mod show;
pub mod sightings;
pub mod tables;
pub mod unionfind;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::identity::sightings::{Sighting, Versions};
use crate::storage::{TableSpec, WriteMode, schema};
use crate::workspace::Workspace;

/// What a run should do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Re-read every event and record instead of only what is new since the last run.
    pub full: bool,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub mode: String,
    /// Why a run asked to be incremental read everything, if it did.
    pub full_because: Option<String>,
    pub sightings: u64,
    pub new_sightings: u64,
    pub identifiers: u64,
    pub links: u64,
    pub profiles: u64,
    pub known_profiles: u64,
    pub merges: u64,
    pub splits: u64,
    pub conflicts: u64,
    pub skipped: Vec<SkipCount>,
    pub large_profiles: Vec<LargeProfile>,
    pub seconds: f64,
    /// Seconds per phase: scan, load, graph, components, ids, profiles, write.
    pub phases: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkipCount {
    pub id_type: String,
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LargeProfile {
    pub profile_id: String,
    pub identifiers: i64,
}

struct Run {
    id: String,
    versions: Versions,
}

/// Resolves identities in the workspace and writes the identity tables.
pub async fn resolve(ws: &Workspace, options: Options) -> Result<Report> {
    let clock = Instant::now();
    let mut phases = crate::output::Phases::since(clock);
    let started = chrono::Utc::now().timestamp_micros();
    let run_id = format!(
        "r{started}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let config = &ws.config.identity;
    let normalisers = normalize::Normalisers::new(config)?;

    let ctx = crate::sql::new_context(ws.config.workspace.memory_limit_mb)?;
    let runs = load_runs(ws).await?;
    let mut full_because = if options.full {
        Some("--full".to_string())
    } else if runs.is_empty() {
        Some("first run".to_string())
    } else {
        None
    };

    // Source tables, and the files of each that are new since the last run.
    let mut sources: Vec<(String, deltalake::DeltaTable)> = Vec::new();
    for spec in source_specs(ws) {
        if let Some(t) = ws.storage.open(&spec).await? {
            sources.push((spec.name, t));
        }
    }
    let versions: Versions = sources
        .iter()
        .map(|(n, t)| (n.clone(), t.version().map_or(-1, |v| v as i64)))
        .collect();
    let mut new_files: Vec<Option<Vec<deltalake::kernel::Add>>> = Vec::new();
    if full_because.is_none() {
        let last = &runs.last().expect("runs exist when incremental").versions;
        for (name, table) in &sources {
            match crate::storage::added_since(table, last.get(name).copied().unwrap_or(-1)).await? {
                Some(adds) => new_files.push(Some(adds)),
                None => {
                    full_because = Some(format!(
                        "data was deleted from {name}, or new files compacted, since the last run"
                    ));
                    break;
                }
            }
        }
    }
    // What earlier runs stored; rows of a run that died before its record mean a full run.
    let mut all = Vec::new();
    if full_because.is_none()
        && let Some(t) = ws.storage.open(&sightings::spec()).await?
    {
        let finished: HashSet<String> = runs.iter().map(|r| r.id.clone()).collect();
        let stored = sightings::load(&ctx, &t, &finished).await?;
        if stored.unfinished {
            full_because = Some("the previous run did not finish".to_string());
        } else {
            all = stored.sightings;
        }
    }
    phases.mark("load");
    let full = full_because.is_some();
    if full {
        new_files = sources.iter().map(|_| None).collect();
    }
    let mut new: Vec<Sighting> = Vec::new();
    for ((name, table), files) in sources.iter().zip(new_files) {
        if name == schema::EVENTS {
            new.extend(sightings::scan_events(&ctx, table, files).await?);
        } else if name == crate::privacy::consent::TABLE {
            new.extend(crate::privacy::consent::scan(&ctx, table, files).await?);
        } else {
            new.extend(sightings::scan_records(&ctx, &ws.config, name, table, files).await?);
        }
    }
    phases.mark("scan");
    // The new sightings are stored as they are; the graph needs them next to the old ones.
    let new_count = new.len() as u64;
    let links_rows = sightings::to_batch(&run_id, &new)?;
    all.extend(new);

    // The graph and its components.
    let g = graph::build(&all, config, &normalisers);
    phases.mark("graph");
    let limits: Vec<(u16, u32)> = config
        .limits
        .iter()
        .filter_map(|(ty, limit)| {
            g.types
                .iter()
                .position(|t| t == ty)
                .map(|i| (i as u16, *limit))
        })
        .collect();
    let node_types: Vec<u16> = g.nodes.iter().map(|n| n.ty).collect();
    let comps = unionfind::components(&node_types, &g.links, &limits);
    phases.mark("components");
    let (old, old_ids) = load_old_ids(ws, &g).await?;
    let assignment = assign::assign(&g, &comps.root, &old, &old_ids);
    phases.mark("ids");
    let pid = |n: u32| assignment.id_of_root[&comps.root[n as usize]].as_str();
    // The profiles, and the identities, keys and routes, need only the components and their
    // ids: built on two threads.
    let (profiles, key_tables) = std::thread::scope(|scope| {
        let key_tables = scope.spawn(|| -> Result<_> {
            let ids_spec = tables::identities();
            let identities = tables::rows(
                &ids_spec,
                vec![
                    tables::strings(
                        g.nodes
                            .iter()
                            .map(|n| Some(g.types[n.ty as usize].as_str())),
                    ),
                    tables::strings(g.nodes.iter().map(|n| Some(&*n.value))),
                    tables::strings((0..g.nodes.len() as u32).map(|n| Some(pid(n)))),
                    tables::times(g.nodes.iter().map(|n| Some(n.first_seen)))?,
                    tables::times(g.nodes.iter().map(|n| Some(n.last_seen)))?,
                    {
                        let texts = g.source_texts(g.nodes.iter().map(|n| n.sources));
                        tables::strings(g.nodes.iter().map(|n| Some(texts[&n.sources].as_str())))
                    },
                ],
            )?;
            let (keys, routes) = keys_and_routes(&g, &all, &pid);
            Ok(vec![
                (ids_spec, identities, WriteMode::Replace),
                (
                    tables::profile_keys(),
                    tables::profile_keys_batch(&keys)?,
                    WriteMode::Replace,
                ),
                (
                    tables::profile_routes(),
                    tables::profile_routes_batch(&routes)?,
                    WriteMode::Replace,
                ),
            ])
        });
        let profiles = profiles::build(&g, &comps.root, &assignment.id_of_root, &all, config);
        let profile_tables = profile_tables(&profiles, config);
        let key_tables = key_tables
            .join()
            .expect("building the identity tables panicked");
        (
            profiles,
            key_tables.and_then(|k| Ok([k, profile_tables?].concat())),
        )
    });
    phases.mark("profiles");

    // Write: the sightings first, the outputs next, the run record last. A run that dies
    // before its record leaves sightings the next run sees as unfinished, and redoes fully.
    let links_spec = sightings::spec();
    let links_mode = if full {
        WriteMode::Replace
    } else {
        WriteMode::Append
    };
    ws.storage
        .write(&links_spec, vec![links_rows], links_mode)
        .await?;
    // The output tables, each replaced whole; written side by side at the end.
    let mut outputs = key_tables?;

    let conflicts_spec = tables::conflicts();
    let mut seen = HashSet::new();
    // Each refused link as (weaker identifier, stronger identifier, limited type, when).
    let rank = |n: u32| {
        (
            g.rank[g.nodes[n as usize].ty as usize],
            &*g.nodes[n as usize].value,
        )
    };
    let refused: Vec<unionfind::Refused> = comps
        .refused
        .iter()
        .filter(|r| seen.insert((r.link.a, r.link.b)))
        .map(|r| {
            let mut r = *r;
            if rank(r.link.a) < rank(r.link.b) {
                std::mem::swap(&mut r.link.a, &mut r.link.b);
            }
            r
        })
        .collect();
    let node = |n: u32| &g.nodes[n as usize];
    let ty = |n: u32| g.types[node(n).ty as usize].as_str();
    let reasons: Vec<String> = refused
        .iter()
        .map(|r| {
            let t = &g.types[r.limited_type as usize];
            format!(
                "linking would give one profile more than {} {t}",
                config.limits[t]
            )
        })
        .collect();
    let conflicts = tables::rows(
        &conflicts_spec,
        vec![
            tables::strings(refused.iter().map(|r| Some(ty(r.link.a)))),
            tables::strings(refused.iter().map(|r| Some(&*node(r.link.a).value))),
            tables::strings(refused.iter().map(|r| Some(ty(r.link.b)))),
            tables::strings(refused.iter().map(|r| Some(&*node(r.link.b).value))),
            tables::strings(
                refused
                    .iter()
                    .map(|r| Some(g.types[r.limited_type as usize].as_str())),
            ),
            tables::strings(refused.iter().map(|r| Some(pid(r.link.a)))),
            tables::strings(refused.iter().map(|r| Some(pid(r.link.b)))),
            tables::times(refused.iter().map(|r| Some(r.link.at)))?,
            tables::strings(reasons.iter().map(|s| Some(s.as_str()))),
        ],
    )?;
    outputs.push((conflicts_spec, conflicts, WriteMode::Replace));

    let changes = &assignment.changes;
    if !changes.is_empty() {
        let merges_spec = tables::merges();
        let rows = tables::rows(
            &merges_spec,
            vec![
                tables::strings(changes.iter().map(|c| Some(c.from.as_str()))),
                tables::strings(changes.iter().map(|c| Some(c.into.as_str()))),
                tables::strings(changes.iter().map(|c| Some(c.kind))),
                tables::times(changes.iter().map(|_| Some(started)))?,
                tables::strings(changes.iter().map(|c| Some(c.reason.as_str()))),
                tables::strings(changes.iter().map(|_| Some(run_id.as_str()))),
            ],
        )?;
        outputs.push((merges_spec, rows, WriteMode::Append));
    }
    write_concurrently(&ws.storage, outputs).await?;
    phases.mark("write");
    let skipped: Vec<SkipCount> = g
        .skipped
        .iter()
        .map(|((t, reason), count)| SkipCount {
            id_type: t.clone(),
            reason: reason.describe().to_string(),
            count: *count,
        })
        .collect();
    let mut large: Vec<LargeProfile> = profiles
        .iter()
        .filter(|p| p.identifiers as usize > config.large_profile)
        .map(|p| LargeProfile {
            profile_id: p.id.clone(),
            identifiers: p.identifiers,
        })
        .collect();
    large.sort_by(|a, b| {
        b.identifiers
            .cmp(&a.identifiers)
            .then(a.profile_id.cmp(&b.profile_id))
    });
    let report = Report {
        run_id: run_id.clone(),
        mode: if full { "full" } else { "incremental" }.to_string(),
        full_because,
        sightings: all.len() as u64,
        new_sightings: new_count,
        identifiers: g.nodes.len() as u64,
        links: g.links.len() as u64,
        profiles: profiles.len() as u64,
        known_profiles: profiles.iter().filter(|p| p.is_known).count() as u64,
        merges: changes.iter().filter(|c| c.kind == "merge").count() as u64,
        splits: changes.iter().filter(|c| c.kind == "split").count() as u64,
        conflicts: refused.len() as u64,
        skipped,
        large_profiles: large,
        seconds: clock.elapsed().as_secs_f64(),
        phases: phases.into_vec(),
    };

    let runs_spec = tables::runs();
    let finished = chrono::Utc::now().timestamp_micros();
    let skipped_json = serde_json::to_string(&report.skipped).expect("serialises");
    let versions_json = serde_json::to_string(&versions).expect("serialises");
    let run_row = tables::rows(
        &runs_spec,
        vec![
            tables::strings([Some(run_id.as_str())]),
            tables::strings([Some(report.mode.as_str())]),
            tables::times([Some(started)])?,
            tables::times([Some(finished)])?,
            tables::strings([Some(versions_json.as_str())]),
            tables::longs([report.sightings as i64]),
            tables::longs([report.new_sightings as i64]),
            tables::longs([report.identifiers as i64]),
            tables::longs([report.profiles as i64]),
            tables::longs([report.merges as i64]),
            tables::longs([report.splits as i64]),
            tables::longs([report.conflicts as i64]),
            tables::strings([Some(skipped_json.as_str())]),
        ],
    )?;
    ws.storage
        .write(&runs_spec, vec![run_row], WriteMode::Append)
        .await?;
    Ok(report)
}

/// The rows of `profiles` and `profile_consent`.
fn profile_tables(
    profiles: &[profiles::Profile],
    config: &crate::config::IdentitySection,
) -> Result<Vec<(TableSpec, arrow::array::RecordBatch, WriteMode<'static>)>> {
    let (spec, batch) = tables::profiles_batch(profiles, &config.trait_identifiers)?;
    Ok(vec![
        (spec, batch, WriteMode::Replace),
        (
            tables::profile_consent(),
            tables::profile_consent_batch(profiles)?,
            WriteMode::Replace,
        ),
    ])
}

/// Writes each (table, rows, mode) in its own task, so that encoding the tables' Parquet files
/// uses every core; each table still commits on its own, atomically.
async fn write_concurrently(
    storage: &crate::storage::Storage,
    outputs: Vec<(TableSpec, arrow::array::RecordBatch, WriteMode<'static>)>,
) -> Result<()> {
    let tasks: Vec<_> = outputs
        .into_iter()
        .map(|(spec, batch, mode)| {
            let storage = storage.clone();
            tokio::spawn(async move { storage.write(&spec, vec![batch], mode).await })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| Error::Other(format!("writing an identity table: {e}")))??;
    }
    Ok(())
}

/// In one pass over the sightings: the keys of each profile (every user id, anonymous id and
/// id-less event message, under its own profile), and the route of each distinct (user id,
/// anonymous id) pair of the events and of each event with neither, to the profile its events
/// belong to: the user id's, else the anonymous id's (when the user id was refused as an
/// identifier), else the one the event's other identifiers link it to. The routes are what
/// `profile_events` joins on, once, where one join per key type cost three probes per event.
fn keys_and_routes<'a>(
    g: &graph::Graph,
    sightings: &'a [Sighting],
    pid: &impl Fn(u32) -> &'a str,
) -> (Vec<tables::Key<'a>>, Vec<tables::Route<'a>>) {
    let mut seen_keys: foldhash::HashSet<(&str, &str)> = Default::default();
    let mut seen_routes: foldhash::HashSet<(Option<&str>, Option<&str>, Option<&str>)> =
        Default::default();
    let (mut keys, mut routes) = (Vec::new(), Vec::new());
    for (i, s) in sightings.iter().enumerate() {
        let (user, anon) = g.keys[i];
        let (u, a, m) = (
            s.user_id.as_deref(),
            s.anonymous_id.as_deref(),
            s.message_id.as_deref(),
        );
        for (ty, raw, node) in [
            ("user_id", u, user),
            ("anonymous_id", a, anon),
            ("message_id", m, g.owner[i]),
        ] {
            if let (Some(raw), Some(n)) = (raw, node)
                && seen_keys.insert((ty, raw))
            {
                keys.push((ty, raw, pid(n)));
            }
        }
        if s.kind != sightings::Kind::Event {
            continue;
        }
        let (m, node) = match (u, a) {
            (None, None) => (m, g.owner[i]),
            _ => (None, user.or(anon)),
        };
        if let Some(n) = node
            && seen_routes.insert((u, a, m))
        {
            routes.push((u, a, m, pid(n)));
        }
    }
    (keys, routes)
}

/// The tables resolution reads, by the names `resolve_runs` records their versions under:
/// `events`, each record source with identifiers, and the consent statements.
fn source_specs(ws: &Workspace) -> Vec<TableSpec> {
    let mut specs = vec![schema::events(&ws.config)];
    for name in sightings::record_sources(&ws.config) {
        specs.push(TableSpec::existing(&name, &format!("records/{name}")));
    }
    specs.push(crate::privacy::consent::spec());
    specs
}

/// Whether events, records or consent statements changed since the last resolve run (or
/// there is data and no run yet): profiles do not reflect everything stored.
pub async fn is_stale(ws: &Workspace) -> Result<bool> {
    let runs = load_runs(ws).await?;
    for spec in source_specs(ws) {
        let Some(table) = ws.storage.open(&spec).await? else {
            continue;
        };
        let version = table.version().map_or(-1, |v| v as i64);
        let seen = runs
            .last()
            .and_then(|r| r.versions.get(&spec.name).copied())
            .unwrap_or(-1);
        if version != seen {
            return Ok(true);
        }
    }
    Ok(false)
}

/// After an erasure: when every commit to the source tables since the last run is a delete
/// (the erasure's own), records a run of mode `erasure` at the new versions, so that the next
/// resolve stays incremental instead of reading everything again. The identity tables lost
/// exactly the erased person's rows, which is what a resolve would have done. Returns whether
/// it recorded one.
pub async fn note_erasure(ws: &Workspace, request_id: &str) -> Result<bool> {
    let runs = load_runs(ws).await?;
    let Some(last) = runs.last() else {
        return Ok(false);
    };
    let mut versions = last.versions.clone();
    for spec in source_specs(ws) {
        let Some(table) = ws.storage.open(&spec).await? else {
            continue;
        };
        let current = table.version().map_or(-1, |v| v as i64);
        let seen = last.versions.get(&spec.name).copied().unwrap_or(-1);
        let Some(commits) = crate::storage::commits_since(&table, seen).await? else {
            return Ok(false);
        };
        let all_deletes = commits.iter().all(|actions| {
            actions.iter().any(|a| {
                matches!(a, deltalake::kernel::Action::CommitInfo(c)
                    if c.operation.as_deref() == Some("DELETE"))
            })
        });
        if !all_deletes {
            return Ok(false);
        }
        versions.insert(spec.name.clone(), current);
    }
    let now = chrono::Utc::now().timestamp_micros();
    let versions_json = serde_json::to_string(&versions).expect("serialises");
    let row = tables::rows(
        &tables::runs(),
        vec![
            tables::strings([Some(request_id)]),
            tables::strings([Some("erasure")]),
            tables::times([Some(now)])?,
            tables::times([Some(now)])?,
            tables::strings([Some(versions_json.as_str())]),
            tables::longs([0]),
            tables::longs([0]),
            tables::longs([0]),
            tables::longs([0]),
            tables::longs([0]),
            tables::longs([0]),
            tables::longs([0]),
            tables::strings([Some("[]")]),
        ],
    )?;
    ws.storage
        .write(&tables::runs(), vec![row], WriteMode::Append)
        .await?;
    Ok(true)
}

/// The completed runs, oldest first.
async fn load_runs(ws: &Workspace) -> Result<Vec<Run>> {
    let rows = query_table(
        ws,
        &tables::runs(),
        "select run_id, versions from t order by started_at, run_id",
    )
    .await?;
    rows.into_iter()
        .map(|r| {
            let versions = serde_json::from_str(&r[1])
                .map_err(|e| Error::Other(format!("resolve_runs: bad versions {:?}: {e}", r[1])))?;
            Ok(Run {
                id: r[0].clone(),
                versions,
            })
        })
        .collect()
}

/// Runs `query` over the table of `spec` (named `t`) and returns its rows as text; no rows when
/// the table does not exist.
pub async fn query_table(
    ws: &Workspace,
    spec: &TableSpec,
    query: &str,
) -> Result<Vec<Vec<String>>> {
    let Some(mut stream) = stream_table(ws, spec, query).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    while let Some(b) = stream.try_next().await? {
        out.extend(sightings::text_rows(&b)?);
    }
    Ok(out)
}

/// The result of `query` over the table of `spec` (named `t`); None when the table does not
/// exist.
async fn stream_table(
    ws: &Workspace,
    spec: &TableSpec,
    query: &str,
) -> Result<Option<datafusion::physical_plan::SendableRecordBatchStream>> {
    let Some(table) = ws.storage.open(spec).await? else {
        return Ok(None);
    };
    let ctx = crate::sql::new_context(ws.config.workspace.memory_limit_mb)?;
    crate::sql::register(&ctx, "t", &table, None).await?;
    Ok(Some(ctx.sql(query).await?.execute_stream().await?))
}

/// Each node's profile id from the previous run, as an index into the returned id list. Reads
/// the Arrow columns directly: at a million profiles there are millions of identities.
async fn load_old_ids(ws: &Workspace, g: &graph::Graph) -> Result<(Vec<Option<u32>>, Vec<String>)> {
    let mut old = vec![None; g.nodes.len()];
    let mut ids = Vec::new();
    let query = "select id_type, id_value, profile_id from t";
    let Some(mut stream) = stream_table(ws, &tables::identities(), query).await? else {
        return Ok((old, ids));
    };
    let mut index: HashMap<String, u32> = HashMap::new();
    while let Some(b) = stream.try_next().await? {
        let cols: Vec<arrow::array::StringArray> = b
            .columns()
            .iter()
            .map(sightings::strings)
            .collect::<Result<_>>()?;
        for row in 0..b.num_rows() {
            let Some(n) = g.find(cols[0].value(row), cols[1].value(row)) else {
                continue;
            };
            let profile = cols[2].value(row);
            let i = match index.get(profile) {
                Some(&i) => i,
                None => {
                    let i = ids.len() as u32;
                    ids.push(profile.to_string());
                    index.insert(profile.to_string(), i);
                    i
                }
            };
            old[n as usize] = Some(i);
        }
    }
    Ok((old, ids))
}
