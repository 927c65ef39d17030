//! The binder and compiler: resolves every name of a segment against the catalog, checks types,
//! and builds the SQL that returns its members.
//!
//! Shape of the compiled query: `profiles` (alias `p`), left-joined with `traits` (`t`) when
//! computed traits are used, with one aggregation over `profile_events` (`a`) that computes every
//! event aggregate of the segment in a single pass (`count(*) FILTER (WHERE …)` per aggregate,
//! the scan filtered to the union of what they need, days outside every window pruned by the
//! `day` partition), with one derived table per sequence (`q0`, …) and per referenced segment
//! (`s0`, …). Windows are resolved against the as-of time at compile time, so they become
//! constant timestamps that prune files and partitions.
//!
//! `members` refines that shape: the aggregation goes per route key, then per profile, where
//! events carry route keys (`events::aggregation_by_route`), and the query starts from a
//! derived table the condition cannot do without (`drive`) instead of from every profile.

mod drive;
mod events;
mod expr;
mod functions;
mod sequence;

use std::collections::BTreeSet;

use chrono::{DateTime, Duration as ChronoDuration, Months, Utc};
use datafusion::sql::sqlparser::ast::{Expr, Query, TableFactor};

use crate::segment::ast::{self, AggKind, BinOp, ExprKind, Literal, SelectorBase, StrOp, Unit};
use crate::segment::catalog::{Catalog, Ty};
use crate::segment::diag::{Diagnostic, closest};
use crate::segment::library::Library;
use crate::segment::sqlast::{self as sql, Dialect};

/// One leaf condition of a segment, for `why`.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The condition as the user wrote it.
    pub text: String,
    /// The value it tests (the left side of a comparison), when there is one.
    pub value: Option<Expr>,
    pub holds: Expr,
}

/// A segment compiled to its parts; `members` and `why` assemble queries from them.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub name: String,
    pub dialect: Dialect,
    pub as_of: DateTime<Utc>,
    condition: Expr,
    joins: Vec<(String, Query)>,
    uses_traits: bool,
    pub leaves: Vec<Leaf>,
    /// Whether DataFusion's dynamic join filters prune event rows in this segment's plan
    /// (`Segments::session_for`): the steps of a sequence prune each other's scans, and a
    /// profile filter prunes single events joined to profiles (a distinct count, an aggregate
    /// that does not combine per route); also when a referenced segment's do. Per-route
    /// aggregates are not pruned by them.
    pub join_filters_prune: bool,
}

/// Errors of a compilation, by file index in the library.
pub type Errors = Vec<(usize, Diagnostic)>;

/// What a members query starts from; every other table is joined to it.
enum Start<'a> {
    /// Every profile (`p`).
    Profiles,
    /// The computed traits (`t`) of current profiles.
    Traits,
    /// One derived table, or several full-joined (a person is in at least one of them).
    Derived(Vec<&'a str>),
}

impl Compiled {
    /// The query returning the member profile ids. It starts from the profiles when the
    /// condition reads a profile field, else from what it cannot do without (`drive`): a
    /// derived table, else the traits, else every derived table together when it needs a row
    /// in one of them (`exists(a) or exists(b)`). A segment over events then never touches the
    /// people who have none of them.
    pub fn members(&self) -> Query {
        let cond = &self.condition;
        let aliases: Vec<&str> = self.joins.iter().map(|(a, _)| a.as_str()).collect();
        let required: Vec<&str> = (aliases.iter().copied())
            .filter(|alias| drive::required(cond, alias))
            .collect();
        // Where single events are joined to profiles, a filter on profile fields goes first:
        // the ids it keeps prune those joins' scans through dynamic filters
        // (new_visitor_signups at 1M people: 2.5 s this way, 3.8-4.2 s starting from the
        // sequence). Elsewhere those filters are off (`Segments::session_for`) and the
        // profiles are joined to what the condition requires, a smaller hash table.
        let start = if drive::references(cond, "p") && self.join_filters_prune {
            Start::Profiles
        } else if let Some(alias) = required.first() {
            Start::Derived(vec![*alias])
        } else if self.uses_traits && drive::required(cond, "t") {
            Start::Traits
        } else if aliases.len() > 1
            && self.dialect.has_full_join()
            && drive::required_one_of(cond, &aliases)
        {
            Start::Derived(aliases.clone())
        } else {
            Start::Profiles
        };
        let mut q = self.base(&start, &required);
        sql::select_mut(&mut q).selection = Some(cond.clone());
        q
    }

    /// The same members as `members`, in the plain shape it improves on: every profile, each
    /// derived table left-joined. Tests check the two agree.
    pub fn members_from_profiles(&self) -> Query {
        let mut q = self.base(&Start::Profiles, &[]);
        sql::select_mut(&mut q).selection = Some(self.condition.clone());
        q
    }

    /// The query returning, for one profile, each leaf's value and result and membership.
    pub fn why(&self, profile_id: &str) -> Query {
        let d = self.dialect;
        let mut q = self.base(&Start::Profiles, &[]);
        let select = sql::select_mut(&mut q);
        select.projection.push(sql::item(
            sql::expr(
                "COALESCE(__0, FALSE)",
                std::slice::from_ref(&self.condition),
            ),
            "member",
            d,
        ));
        for (i, leaf) in self.leaves.iter().enumerate() {
            if let Some(v) = &leaf.value {
                select
                    .projection
                    .push(sql::item(v.clone(), &format!("value_{i}"), d));
            }
            select
                .projection
                .push(sql::item(leaf.holds.clone(), &format!("holds_{i}"), d));
        }
        select.selection = Some(sql::expr(
            "p.profile_id = __0",
            &[sql::string(profile_id, d)],
        ));
        q
    }

    /// `SELECT … profile_id FROM …` starting from `start`, with every other table joined on the
    /// profile id. The `required` derived tables are inner joins, the others left joins. The
    /// table a join starts from comes first: segment sessions build each hash join from its
    /// left side (`Segments::open`).
    fn base(&self, start: &Start, required: &[&str]) -> Query {
        let derived: &[&str] = match start {
            Start::Derived(aliases) => aliases,
            Start::Profiles | Start::Traits => &[],
        };
        let (mut template, key) = match (start, derived) {
            (Start::Profiles, _) => (
                "SELECT p.profile_id FROM profiles AS p".to_string(),
                "p.profile_id".to_string(),
            ),
            // The traits may still hold profiles merged away since they were computed: the
            // join to the profiles drops those.
            (Start::Traits, _) => (
                "SELECT t.profile_id FROM traits AS t JOIN profiles AS p ON p.profile_id = t.profile_id"
                    .to_string(),
                "t.profile_id".to_string(),
            ),
            (_, []) => unreachable!("a query starts from at least one derived table"),
            (_, [one]) => (
                format!("SELECT {one}.profile_id FROM sub_{one} AS {one}"),
                format!("{one}.profile_id"),
            ),
            (_, [first, rest @ ..]) => {
                let mut template = String::new();
                let mut ids = vec![format!("{first}.profile_id")];
                for alias in rest {
                    let key = coalesce(&ids);
                    template.push_str(&format!(
                        " FULL JOIN sub_{alias} AS {alias} ON {alias}.profile_id = {key}"
                    ));
                    ids.push(format!("{alias}.profile_id"));
                }
                let key = coalesce(&ids);
                (
                    format!("SELECT {key} AS profile_id FROM sub_{first} AS {first}{template}"),
                    key,
                )
            }
        };
        if !derived.is_empty() && drive::references(&self.condition, "p") {
            template.push_str(&format!(" JOIN profiles AS p ON p.profile_id = {key}"));
        }
        if self.uses_traits && !matches!(start, Start::Traits) {
            template.push_str(&format!(" LEFT JOIN traits AS t ON t.profile_id = {key}"));
        }
        for (alias, _) in self
            .joins
            .iter()
            .filter(|(a, _)| !derived.contains(&a.as_str()))
        {
            let kind = if required.contains(&alias.as_str()) {
                "JOIN"
            } else {
                "LEFT JOIN"
            };
            template.push_str(&format!(
                " {kind} sub_{alias} AS {alias} ON {alias}.profile_id = {key}"
            ));
        }
        let mut q = sql::query(&template, &[]);
        let from = &mut sql::select_mut(&mut q).from[0];
        self.derive(&mut from.relation);
        for join in &mut from.joins {
            self.derive(&mut join.relation);
        }
        q
    }

    /// Puts the derived table's query where the template names it `sub_<alias>`.
    fn derive(&self, relation: &mut TableFactor) {
        let TableFactor::Table { name, alias, .. } = relation else {
            return;
        };
        let Some((_, sub)) = self
            .joins
            .iter()
            .find(|(a, _)| name.to_string() == format!("sub_{a}"))
        else {
            return;
        };
        *relation = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(sub.clone()),
            alias: alias.clone(),
            sample: None,
        };
    }
}

/// `coalesce(a, b, …)` of the given columns, or the one column.
fn coalesce(ids: &[String]) -> String {
    match ids {
        [one] => one.clone(),
        _ => format!("coalesce({})", ids.join(", ")),
    }
}

/// Compiles segment `name` of `lib` for `as_of`.
pub fn compile(
    lib: &Library,
    cat: &Catalog,
    name: &str,
    as_of: DateTime<Utc>,
    dialect: Dialect,
) -> Result<Compiled, Errors> {
    compile_inner(lib, cat, name, as_of, dialect, &mut Vec::new())
}

/// The errors of event definition `name` (its event names, properties and filter).
pub fn check_event(lib: &Library, cat: &Catalog, name: &str) -> Errors {
    let Some((file, def)) = lib.event(name) else {
        return Vec::new();
    };
    let mut stack = Vec::new();
    let mut c = Compiler::new(lib, cat, Utc::now(), Dialect::Datafusion, file, &mut stack);
    c.selector(&def.selector);
    c.errors
}

fn compile_inner(
    lib: &Library,
    cat: &Catalog,
    name: &str,
    as_of: DateTime<Utc>,
    dialect: Dialect,
    stack: &mut Vec<String>,
) -> Result<Compiled, Errors> {
    let Some((file, def)) = lib.segment(name) else {
        let known: Vec<&str> = lib.segment_names().collect();
        let hint = closest(name, known.iter().copied())
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        return Err(vec![(
            usize::MAX,
            Diagnostic::new(Default::default(), format!("no segment `{name}`{hint}")),
        )]);
    };
    stack.push(name.to_string());
    let mut c = Compiler::new(lib, cat, as_of, dialect, file, stack);
    let condition = c.profile(&def.expr, true);
    if let Some((_, ty)) = &condition
        && !matches!(ty, Ty::Bool | Ty::Null)
    {
        c.error(
            def.expr.span,
            format!("a segment is a condition, but this is a {}", ty.name()),
            "compare it with something, e.g. `… > 0`",
        );
    }
    c.stack.pop();
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let mut joins = Vec::new();
    let condition = condition
        .map(|(e, _)| e)
        .unwrap_or_else(|| sql::boolean(false));
    // Single events joined to profiles (not per-route aggregates), where a profile filter
    // goes first and its ids prune them (`Compiled::members`).
    let mut event_rows = !c.distincts.is_empty();
    if !c.aggs.is_empty() {
        let by_route = c.aggregation_by_route();
        event_rows |= by_route.is_none();
        joins.push((
            "a".to_string(),
            by_route.unwrap_or_else(|| c.aggregation_per_profile()),
        ));
    }
    for (i, (_, q)) in c.distincts.iter().enumerate() {
        joins.push((format!("c{i}"), q.clone()));
    }
    for (i, (_, q)) in c.seqs.iter().enumerate() {
        joins.push((format!("q{i}"), q.clone()));
    }
    for (i, (_, q)) in c.segments.iter().enumerate() {
        joins.push((format!("s{i}"), q.clone()));
    }
    let join_filters_prune = c.join_filters_prune
        || !c.seqs.is_empty()
        || (event_rows && drive::references(&condition, "p"));
    Ok(Compiled {
        name: name.to_string(),
        dialect,
        as_of,
        condition,
        joins,
        uses_traits: c.uses_traits,
        leaves: c.leaves,
        join_filters_prune,
    })
}

struct Compiler<'a> {
    lib: &'a Library,
    cat: &'a Catalog,
    now: DateTime<Utc>,
    d: Dialect,
    /// The file of the definition being compiled (errors point into it).
    file: usize,
    stack: &'a mut Vec<String>,
    errors: Errors,
    /// Aggregates of the single pass over events.
    aggs: Vec<Agg>,
    /// The rows each aggregate reads (`aggregation_filter`).
    agg_conditions: Vec<Selection>,
    /// Earliest and latest instants any aggregate reads (None: unbounded).
    agg_lower: Option<DateTime<Utc>>,
    agg_upper: DateTime<Utc>,
    seqs: Vec<(String, Query)>,
    /// Distinct counts, each a grouped query of its own.
    distincts: Vec<(String, Query)>,
    segments: Vec<(String, Query)>,
    /// A referenced segment's plan is pruned by join filters (`Compiled::join_filters_prune`).
    join_filters_prune: bool,
    uses_traits: bool,
    leaves: Vec<Leaf>,
    in_event: bool,
}

type Typed = Option<(Expr, Ty)>;

/// A selector within a window, as one condition on event rows.
#[derive(Clone)]
struct Selection {
    /// The selector and the window.
    cond: Expr,
    /// The event name (its SQL literal) when the selector is only `event = name`.
    bare_event: Option<Expr>,
    /// Earliest and latest instants it reads (None: unbounded).
    lower: Option<DateTime<Utc>>,
    upper: DateTime<Utc>,
}

/// One aggregate of the single pass over events: an aggregate over rows (a profile's, or a
/// route's, a user id and anonymous id pair), and how the values of a profile's routes combine
/// into the profile's.
struct Agg {
    expr: Expr,
    merge: Merge,
}

/// How per-route values of an aggregate combine into a profile's.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Merge {
    Sum,
    /// A sum, rounded to 6 decimal places once complete (see `aggregate`).
    RoundedSum,
    Min,
    Max,
    /// They do not (ordered `first`/`last`, `avg`): only the aggregation over a profile's
    /// rows computes it.
    Whole,
}

impl Agg {
    /// The aggregate over a profile's rows of `profile_events`.
    fn per_profile(&self, c: &Compiler) -> Expr {
        match self.merge {
            Merge::RoundedSum => c.round6(self.expr.clone()),
            _ => self.expr.clone(),
        }
    }

    /// The profile's value from its routes' values in column `x.<column>`, if they combine.
    fn combined(&self, c: &Compiler, column: &str) -> Option<Expr> {
        let part = sql::expr(&format!("x.{column}"), &[]);
        Some(match self.merge {
            Merge::Sum => sql::expr("sum(__0)", &[part]),
            Merge::RoundedSum => c.round6(sql::expr("sum(__0)", &[part])),
            Merge::Min => sql::expr("min(__0)", &[part]),
            Merge::Max => sql::expr("max(__0)", &[part]),
            Merge::Whole => return None,
        })
    }
}

impl<'a> Compiler<'a> {
    fn new(
        lib: &'a Library,
        cat: &'a Catalog,
        now: DateTime<Utc>,
        d: Dialect,
        file: usize,
        stack: &'a mut Vec<String>,
    ) -> Compiler<'a> {
        Compiler {
            lib,
            cat,
            now,
            d,
            file,
            stack,
            errors: Vec::new(),
            aggs: Vec::new(),
            agg_conditions: Vec::new(),
            agg_lower: Some(now),
            agg_upper: now,
            seqs: Vec::new(),
            distincts: Vec::new(),
            segments: Vec::new(),
            join_filters_prune: false,
            uses_traits: false,
            leaves: Vec::new(),
            in_event: false,
        }
    }

    fn error(&mut self, span: ast::Span, message: impl Into<String>, help: impl Into<String>) {
        let help: String = help.into();
        let mut d = Diagnostic::new(span, message);
        if !help.is_empty() {
            d = d.help(help);
        }
        self.errors.push((self.file, d));
    }

    fn text(&self, span: ast::Span) -> String {
        let src = &self.lib.files[self.file].source.text;
        src[span.start.min(src.len())..span.end.min(src.len())]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn leaf(&mut self, span: ast::Span, value: Option<Expr>, holds: &Expr, record: bool) {
        if record && !self.in_event {
            self.leaves.push(Leaf {
                text: self.text(span),
                value,
                holds: holds.clone(),
            });
        }
    }
}

/// A field path as written (`address.city`) and where it is.
fn dotted(path: &[ast::Name]) -> (String, ast::Span) {
    let text = path
        .iter()
        .map(|n| n.text.as_str())
        .collect::<Vec<_>>()
        .join(".");
    (text, path[0].span.to(path[path.len() - 1].span))
}

/// `t` moved by `n` units; calendar months and years keep the day of month where it exists
/// (and clamp to the month's last day where it does not: Jan 31 + 1 month = Feb 28).
pub fn shift(t: DateTime<Utc>, n: i64, unit: Unit) -> Option<DateTime<Utc>> {
    let fixed =
        |secs: i64| t.checked_add_signed(ChronoDuration::try_seconds(secs.checked_mul(n)?)?);
    match unit {
        Unit::Minute => fixed(60),
        Unit::Hour => fixed(3600),
        Unit::Day => fixed(86_400),
        Unit::Week => fixed(7 * 86_400),
        Unit::Month | Unit::Year => {
            let months = if unit == Unit::Year {
                n.checked_mul(12)?
            } else {
                n
            };
            let m = Months::new(u32::try_from(months.unsigned_abs()).ok()?);
            if months >= 0 {
                t.checked_add_months(m)
            } else {
                t.checked_sub_months(m)
            }
        }
    }
}
