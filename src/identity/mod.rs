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
pub mod incremental;
pub mod normalize;
pub mod profiles;
pub mod runs;
pub mod scan;
pub mod show;
pub mod sightings;
mod stored;
pub mod tables;
pub mod trait_columns;
pub mod unionfind;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
pub use crate::identity::runs::{is_stale, note_erasure};
use crate::identity::runs::{load_runs, rebuild_reason, rules_fingerprint, write_run};
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
    /// `incremental` (only the profiles new data reaches), `rebuild` (every profile, from the
    /// stored sightings) or `full` (every profile, from the sources).
    pub mode: String,
    /// Why a run that could have been incremental was not, if it was not.
    pub full_because: Option<String>,
    /// The sightings the run computed profiles from.
    pub sightings: u64,
    pub new_sightings: u64,
    /// Stored profiles the new sightings reached (incremental runs).
    pub affected_profiles: Option<u64>,
    /// Profiles the run computed; the others kept their rows.
    pub recomputed_profiles: u64,
    /// Identifiers and profiles in the tables after the run.
    pub identifiers: u64,
    /// Links in the graph the run built.
    pub links: u64,
    pub profiles: u64,
    pub known_profiles: u64,
    pub merges: u64,
    pub splits: u64,
    pub conflicts: u64,
    pub skipped: Vec<SkipCount>,
    pub large_profiles: Vec<LargeProfile>,
    pub seconds: f64,
    /// Seconds per phase: scan, graph of new data, read identities, affected, load, graph,
    /// components, ids, profiles, keep, write sightings, profiles table, write
    /// (each only when the run has it). Writes overlap the phases after them:
    /// a phase is the time until the next one could start.
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

/// How much of the stored state a run recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Everything, from the events and records themselves.
    Full,
    /// Everything, from all stored sightings and the new ones (after a rule change).
    Rebuild,
    /// Only the profiles the new sightings reach; every other row stays.
    Incremental,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Rebuild => "rebuild",
            Mode::Incremental => "incremental",
        }
    }
}

/// One output table: its rows, and whether they replace the table or are appended.
pub(crate) type Output = (
    TableSpec,
    Vec<arrow::array::RecordBatch>,
    WriteMode<'static>,
);

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
    let rules = rules_fingerprint(config);

    let ctx = crate::sql::new_context(ws.config.workspace.memory_limit_mb)?;
    let runs = load_runs(ws).await?;
    let mut because = if options.full {
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
    if because.is_none() {
        let last = &runs.last().expect("runs exist when incremental").versions;
        for (name, table) in &sources {
            match crate::storage::added_since(table, last.get(name).copied().unwrap_or(-1)).await? {
                Some(adds) => new_files.push(Some(adds)),
                None => {
                    because = Some(format!(
                        "data was deleted from {name}, or new files compacted, since the last run"
                    ));
                    break;
                }
            }
        }
    }
    let links_table = ws.storage.open(&sightings::spec()).await?;
    let finished: HashSet<String> = runs.iter().map(|r| r.id.clone()).collect();
    if because.is_none()
        && let Some(t) = &links_table
        && sightings::has_unfinished(&ctx, t, &finished).await?
    {
        because = Some("the previous run did not finish".to_string());
    }
    let mode = match because {
        Some(_) => Mode::Full,
        None => {
            because = rebuild_reason(ws, &runs, &rules, links_table.as_ref()).await?;
            if because.is_some() {
                Mode::Rebuild
            } else {
                Mode::Incremental
            }
        }
    };
    if mode == Mode::Full {
        new_files = sources.iter().map(|_| None).collect();
    }
    let source = stored::Source::new(ws);
    let mut new: Vec<Sighting> = Vec::new();
    for ((name, table), files) in sources.iter().zip(new_files) {
        if name == schema::EVENTS {
            new.extend(scan::scan_events(&ctx, table, files).await?);
        } else if name == crate::privacy::consent::TABLE {
            new.extend(crate::privacy::consent::scan(&ctx, table, files).await?);
        } else {
            new.extend(sightings::scan_records(&ctx, &ws.config, name, table, files).await?);
        }
    }
    phases.mark("scan");
    let new_count = new.len() as u64;
    // The graph of the new sightings alone: what they skip, and which identifiers they carry.
    let new_graph = graph::build(&new, config, &normalisers);
    // In a full run this is the whole graph.
    phases.mark("graph of new data");
    let skipped: Vec<SkipCount> = new_graph
        .skipped
        .iter()
        .map(|((t, reason), count)| SkipCount {
            id_type: t.clone(),
            reason: reason.describe().to_string(),
            count: *count,
        })
        .collect();

    if mode == Mode::Incremental && new_graph.nodes.is_empty() {
        // No new identifier, so nothing reaches a profile: the output tables stay as they are.
        let links_rows = sightings::to_batch(&run_id, &new, &vec![None; new.len()])?;
        ws.storage
            .write(&sightings::spec(), vec![links_rows], WriteMode::Append)
            .await?;
        let counts = stored_counts(ws).await?;
        let report = Report {
            run_id: run_id.clone(),
            mode: mode.name().to_string(),
            full_because: because,
            sightings: new_count,
            new_sightings: new_count,
            affected_profiles: Some(0),
            recomputed_profiles: 0,
            identifiers: counts[0],
            links: 0,
            profiles: counts[1],
            known_profiles: counts[2],
            merges: 0,
            splits: 0,
            conflicts: counts[3],
            skipped,
            large_profiles: stored_large_profiles(ws, config.large_profile).await?,
            seconds: clock.elapsed().as_secs_f64(),
            phases: {
                phases.mark("write");
                phases.into_vec()
            },
        };
        write_run(ws, &report, started, &versions, &rules).await?;
        return Ok(report);
    }
    // The stored state this run builds on, and the sightings it recomputes profiles from:
    // those stored before (all, or the affected profiles' only) and then the new ones.
    // An incremental run rewrites `identities` from these rows; the others need the ids only.
    let identities_spec = tables::identities();
    let identities: Vec<arrow::array::RecordBatch> = if mode == Mode::Incremental {
        source
            .all(&identities_spec)
            .await?
            .iter()
            .map(|b| crate::storage::conform(b, &identities_spec.schema))
            .collect::<Result<_>>()?
    } else {
        let query = "select id_type, id_value, profile_id from t";
        match source.stream(&identities_spec, query).await? {
            Some(stream) => stream.try_collect().await?,
            None => Vec::new(),
        }
    };
    phases.mark("read identities");
    let mut prior = None;
    // Stored tables an incremental run has read already and rewrites later, by name.
    let mut in_memory = HashMap::new();
    let mut all = Vec::new();
    match mode {
        Mode::Full => {}
        Mode::Rebuild => {
            let t = links_table
                .as_ref()
                .expect("rebuilds have stored sightings");
            all = sightings::load(&ctx, t, None).await?;
        }
        Mode::Incremental => {
            let conflicts_spec = tables::conflicts();
            let conflicts = source.all(&conflicts_spec).await?;
            let pairs = incremental::profile_pairs(&conflicts)?;
            in_memory.insert(conflicts_spec.name, conflicts);
            in_memory.insert(identities_spec.name.clone(), identities.clone());
            let mut p = incremental::prior(
                &identities,
                &incremental::wanted(&new_graph, &new, &normalisers),
                &pairs,
            )?;
            phases.mark("affected");
            let t = links_table
                .as_ref()
                .expect("incremental runs have stored sightings");
            let anchors = std::sync::Arc::new(std::mem::take(&mut p.anchors));
            all = sightings::load(&ctx, t, Some(anchors)).await?;
            prior = Some(p);
        }
    }
    phases.mark("load");
    let stored_count = all.len();
    let g = if mode == Mode::Full {
        all = new;
        new_graph
    } else {
        all.extend(new);
        graph::build(&all, config, &normalisers)
    };
    phases.mark("graph");
    // Write: the sightings first, the outputs next, the run record last. A run that dies
    // before its record leaves sightings the next run sees as unfinished, and redoes fully.
    // Only an incremental run appends its new sightings; the others store all of them again,
    // each with its anchor under the current rules. The sightings are written while the
    // profiles are computed; the outputs wait for their commit.
    let g = std::sync::Arc::new(g);
    let all = std::sync::Arc::new(all);
    let sightings_write = {
        let (g, all, run_id) = (g.clone(), all.clone(), run_id.clone());
        let (from, write_mode) = match mode {
            Mode::Incremental => (stored_count, WriteMode::Append),
            _ => (0, WriteMode::Replace),
        };
        let storage = ws.storage.clone();
        tokio::spawn(async move {
            let rows = tokio::task::spawn_blocking(move || {
                let anchors: Vec<Option<String>> = g.owner[from..]
                    .iter()
                    .map(|o| {
                        o.map(|n| {
                            let node = &g.nodes[n as usize];
                            incremental::anchor(&g.types[node.ty as usize], &node.value)
                        })
                    })
                    .collect();
                sightings::to_batch(&run_id, &all[from..], &anchors)
            })
            .await
            .map_err(|e| Error::Other(format!("making the sightings' rows: {e}")))??;
            storage
                .write(&sightings::spec(), vec![rows], write_mode)
                .await
        })
    };
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
    let (old, old_ids) = old_ids(&identities, &g)?;
    let taken = prior.as_ref().map(|p| &p.taken);
    let assignment = assign::assign(&g, &comps.root, &old, &old_ids, taken);
    phases.mark("ids");
    let pid = |n: u32| assignment.id_of_root[&comps.root[n as usize]].as_str();
    // The rows this run writes for the profiles it computed; an incremental run adds the
    // stored rows of every other profile.
    let (profiles, outputs) = std::thread::scope(|scope| {
        let key_tables = scope.spawn(|| -> Result<Vec<Output>> {
            let identities_rows = tables::rows(
                &identities_spec,
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
                (
                    identities_spec.clone(),
                    vec![identities_rows],
                    WriteMode::Replace,
                ),
                (
                    tables::profile_keys(),
                    vec![tables::profile_keys_batch(&keys)?],
                    WriteMode::Replace,
                ),
                (
                    tables::profile_routes(),
                    vec![tables::profile_routes_batch(&routes)?],
                    WriteMode::Replace,
                ),
            ])
        });
        let profiles = profiles::build(&g, &comps.root, &assignment.id_of_root, &all, config);
        let key_tables = key_tables
            .join()
            .expect("building the identity tables panicked");
        (profiles, key_tables)
    });
    let mut outputs = outputs?;
    outputs.push(conflicts_output(&g, &comps, &pid, config)?);
    outputs.push((
        tables::profile_consent(),
        vec![tables::profile_consent_batch(&profiles)?],
        WriteMode::Replace,
    ));
    phases.mark("profiles");
    let recomputed_profiles = profiles.len() as u64;
    // The profiles table is made while the other tables are kept and written: an incremental
    // run adds every stored profile row it did not recompute, read as it is
    // (`profiles_batch` rebuilds its trait columns, whose types follow the data).
    let affected = prior
        .as_ref()
        .map(|p| std::sync::Arc::new(p.affected.clone()));
    let profiles_table = tokio::spawn(stored::profiles_table(
        source.clone(),
        profiles,
        affected.clone(),
        config.trait_identifiers.clone(),
    ));

    // An incremental run keeps the stored rows of every profile it did not recompute.
    let mut unchanged = HashMap::new();
    if let Some(affected) = affected {
        unchanged = stored::keep(&source, &mut outputs, in_memory, affected).await?;
        phases.mark("keep");
    }
    let rows_of = |name: &str| -> u64 {
        if let Some(&count) = unchanged.get(name) {
            return count;
        }
        outputs
            .iter()
            .filter(|(spec, _, _)| spec.name == name)
            .flat_map(|(_, batches, _)| batches.iter().map(|b| b.num_rows() as u64))
            .sum()
    };
    let total_identifiers = rows_of("identities");
    let conflicts = rows_of("identity_conflicts");
    outputs.retain(|(spec, _, _)| !unchanged.contains_key(&spec.name));
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
        outputs.push((merges_spec, vec![rows], WriteMode::Append));
    } else {
        // A workspace whose profiles never merged still has the table, empty, so that SQL
        // over it (and the privacy commands that read it) finds no rows instead of no table.
        ws.storage.open_or_create(&tables::merges()).await?;
    }
    sightings_write
        .await
        .map_err(|e| Error::Other(format!("writing the sightings: {e}")))??;
    phases.mark("write sightings");
    // The finished outputs are written while the profiles table is made.
    let mut writes: Vec<_> = outputs.into_iter().map(|o| spawn_write(ws, o)).collect();

    let (profiles_spec, profiles_rows) = profiles_table
        .await
        .map_err(|e| Error::Other(format!("making the profiles table: {e}")))??;
    phases.mark("profiles table");
    let large = large_profiles(&profiles_rows, config.large_profile)?;
    let total_profiles = profiles_rows.num_rows() as u64;
    let known_profiles = count_true(&profiles_rows, "is_known")?;
    writes.push(spawn_write(
        ws,
        (profiles_spec, vec![profiles_rows], WriteMode::Replace),
    ));
    for task in writes {
        task.await
            .map_err(|e| Error::Other(format!("writing an identity table: {e}")))??;
    }
    phases.mark("write");
    let report = Report {
        run_id: run_id.clone(),
        mode: mode.name().to_string(),
        full_because: because,
        sightings: all.len() as u64,
        new_sightings: new_count,
        affected_profiles: prior.as_ref().map(|p| p.affected.len() as u64),
        recomputed_profiles,
        identifiers: total_identifiers,
        links: g.links.len() as u64,
        profiles: total_profiles,
        known_profiles,
        merges: changes.iter().filter(|c| c.kind == "merge").count() as u64,
        splits: changes.iter().filter(|c| c.kind == "split").count() as u64,
        conflicts,
        skipped,
        large_profiles: large,
        seconds: clock.elapsed().as_secs_f64(),
        phases: phases.into_vec(),
    };
    write_run(ws, &report, started, &versions, &rules).await?;
    Ok(report)
}

/// Writes one output table in a task of its own, so that encoding the tables' Parquet files
/// uses every core; each table still commits on its own, atomically.
fn spawn_write(ws: &Workspace, output: Output) -> tokio::task::JoinHandle<Result<i64>> {
    let storage = ws.storage.clone();
    let (spec, batches, mode) = output;
    tokio::spawn(async move { storage.write(&spec, batches, mode).await })
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

/// Runs `query` over the table of `spec` (named `t`) and returns its rows as text; no rows when
/// the table does not exist.
pub async fn query_table(
    ws: &Workspace,
    spec: &TableSpec,
    query: &str,
) -> Result<Vec<Vec<String>>> {
    stored::Source::new(ws).text_rows(spec, query).await
}

/// Rows in `identities`, `profiles`, known profiles, and rows in `identity_conflicts`.
async fn stored_counts(ws: &Workspace) -> Result<[u64; 4]> {
    let profiles = TableSpec::existing("profiles", "profiles");
    let mut counts = [0; 4];
    for (i, (spec, query)) in [
        (&tables::identities(), "select count(*) from t"),
        (&profiles, "select count(*) from t"),
        (&profiles, "select count(*) from t where is_known"),
        (&tables::conflicts(), "select count(*) from t"),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(row) = query_table(ws, spec, query).await?.first() {
            counts[i] = row[0].parse().unwrap_or(0);
        }
    }
    Ok(counts)
}

/// The stored profiles with more identifiers than `threshold`, largest first.
async fn stored_large_profiles(ws: &Workspace, threshold: usize) -> Result<Vec<LargeProfile>> {
    let query = format!(
        "select profile_id, identifiers from t where identifiers > {threshold} \
         order by identifiers desc, profile_id"
    );
    let rows = query_table(ws, &TableSpec::existing("profiles", "profiles"), &query).await?;
    Ok(rows
        .into_iter()
        .map(|r| LargeProfile {
            identifiers: r[1].parse().unwrap_or(0),
            profile_id: r[0].clone(),
        })
        .collect())
}

/// Each node's profile id from the previous run (`identities` rows), as an index into the
/// returned id list. Reads the Arrow columns directly: at a million profiles there are
/// millions of identities.
fn old_ids(
    identities: &[arrow::array::RecordBatch],
    g: &graph::Graph,
) -> Result<(Vec<Option<u32>>, Vec<String>)> {
    let mut old = vec![None; g.nodes.len()];
    let mut ids = Vec::new();
    let batches: Vec<Vec<arrow::array::StringArray>> = identities
        .iter()
        .map(|b| b.columns()[..3].iter().map(sightings::strings).collect())
        .collect::<Result<_>>()?;
    // Keyed by the texts in `batches`: each profile id is copied once, not once per identifier.
    let mut index: HashMap<&str, u32> = HashMap::new();
    for cols in &batches {
        for row in 0..arrow::array::Array::len(&cols[0]) {
            let Some(n) = g.find(cols[0].value(row), cols[1].value(row)) else {
                continue;
            };
            let profile = cols[2].value(row);
            let i = *index.entry(profile).or_insert_with(|| {
                ids.push(profile.to_string());
                (ids.len() - 1) as u32
            });
            old[n as usize] = Some(i);
        }
    }
    Ok((old, ids))
}

/// The links the over-merging rules refused, as rows of `identity_conflicts`: each once, as
/// (weaker identifier, stronger identifier, limited type, when).
fn conflicts_output<'a>(
    g: &graph::Graph,
    comps: &unionfind::Components,
    pid: &impl Fn(u32) -> &'a str,
    config: &crate::config::IdentitySection,
) -> Result<Output> {
    let spec = tables::conflicts();
    let mut seen = HashSet::new();
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
    let rows = tables::rows(
        &spec,
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
    Ok((spec, vec![rows], WriteMode::Replace))
}

/// Profiles (rows of `profiles`) with more identifiers than `threshold`, largest first.
fn large_profiles(
    profiles: &arrow::array::RecordBatch,
    threshold: usize,
) -> Result<Vec<LargeProfile>> {
    let ids = sightings::strings(profiles.column_by_name("profile_id").expect("fixed column"))?;
    let counts = sightings::ints(
        profiles
            .column_by_name("identifiers")
            .expect("fixed column"),
    )?;
    let mut large: Vec<LargeProfile> = (0..profiles.num_rows())
        .filter(|&i| counts.value(i) as usize > threshold)
        .map(|i| LargeProfile {
            profile_id: ids.value(i).to_string(),
            identifiers: counts.value(i),
        })
        .collect();
    large.sort_by(|a, b| {
        b.identifiers
            .cmp(&a.identifiers)
            .then(a.profile_id.cmp(&b.profile_id))
    });
    Ok(large)
}

/// How many rows of `batch` hold true in the boolean column `name`.
fn count_true(batch: &arrow::array::RecordBatch, name: &str) -> Result<u64> {
    let col = arrow::compute::cast(
        batch.column_by_name(name).expect("fixed column"),
        &arrow::datatypes::DataType::Boolean,
    )?;
    let col = col
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()
        .expect("cast to Boolean");
    Ok(col.true_count() as u64)
}
