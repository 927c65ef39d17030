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
}

/// Errors of a compilation, by file index in the library.
pub type Errors = Vec<(usize, Diagnostic)>;

impl Compiled {
    /// The query returning the member profile ids.
    pub fn members(&self) -> Query {
        let mut q = self.base("SELECT p.profile_id FROM profiles AS p");
        sql::select_mut(&mut q).selection = Some(self.condition.clone());
        q
    }

    /// The query returning, for one profile, each leaf's value and result and membership.
    pub fn why(&self, profile_id: &str) -> Query {
        let d = self.dialect;
        let mut q = self.base("SELECT p.profile_id FROM profiles AS p");
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

    fn base(&self, template: &str) -> Query {
        let mut joins = String::new();
        if self.uses_traits {
            joins.push_str(" LEFT JOIN traits AS t ON t.profile_id = p.profile_id");
        }
        for (alias, _) in &self.joins {
            joins.push_str(&format!(
                " LEFT JOIN sub_{alias} AS {alias} ON {alias}.profile_id = p.profile_id"
            ));
        }
        let mut q = sql::query(&format!("{template}{joins}"), &[]);
        let select = sql::select_mut(&mut q);
        for join in &mut select.from[0].joins {
            let TableFactor::Table { name, alias, .. } = &join.relation else {
                continue;
            };
            let Some((_, sub)) = self
                .joins
                .iter()
                .find(|(a, _)| name.to_string() == format!("sub_{a}"))
            else {
                continue;
            };
            join.relation = TableFactor::Derived {
                lateral: false,
                subquery: Box::new(sub.clone()),
                alias: alias.clone(),
                sample: None,
            };
        }
        q
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
    if !c.aggs.is_empty() {
        joins.push(("a".to_string(), c.aggregation_query()));
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
    Ok(Compiled {
        name: name.to_string(),
        dialect,
        as_of,
        condition: condition
            .map(|(e, _)| e)
            .unwrap_or_else(|| sql::boolean(false)),
        joins,
        uses_traits: c.uses_traits,
        leaves: c.leaves,
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
    /// Aggregates of the single pass over events: (dedupe key, SQL).
    aggs: Vec<(String, Expr)>,
    /// What each aggregate needs, OR-ed into the scan's filter.
    agg_conditions: Vec<Expr>,
    /// Earliest and latest instants any aggregate reads (None: unbounded).
    agg_lower: Option<DateTime<Utc>>,
    agg_upper: DateTime<Utc>,
    seqs: Vec<(String, Query)>,
    /// Distinct counts, each a grouped query of its own.
    distincts: Vec<(String, Query)>,
    segments: Vec<(String, Query)>,
    uses_traits: bool,
    leaves: Vec<Leaf>,
    in_event: bool,
}

type Typed = Option<(Expr, Ty)>;

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

    /// Compiles an expression; `record` says whether its leaves are reported by `why`.
    fn profile(&mut self, e: &ast::Expr, record: bool) -> Typed {
        let d = self.d;
        match &e.kind {
            ExprKind::Literal(l) => Some(self.literal(l)),
            ExprKind::Now => Some((sql::timestamp(self.now, d), Ty::Time)),
            ExprKind::Duration(_) => {
                self.error(
                    e.span,
                    "a duration on its own has no value",
                    "add it to or subtract it from a time: `now - 30 days`",
                );
                None
            }
            ExprKind::Field(path) => {
                let (expr, ty) = if self.in_event {
                    self.event_field(path)?
                } else {
                    self.profile_field(path)?
                };
                if ty == Ty::Bool {
                    let holds = expr.clone();
                    self.leaf(e.span, None, &holds, record);
                }
                Some((expr, ty))
            }
            ExprKind::Neg(inner) => {
                let (x, ty) = self.profile(inner, record)?;
                self.expect(inner.span, ty, Ty::Number, "`-` negates numbers")?;
                Some((sql::expr("-__0", &[x]), Ty::Number))
            }
            ExprKind::Not(inner) => {
                let (x, ty) = self.profile(inner, record)?;
                self.expect(inner.span, ty, Ty::Bool, "`not` takes a condition")?;
                Some((sql::expr("NOT __0", &[sql::nested(x)]), Ty::Bool))
            }
            ExprKind::Binary(op, l, r) => self.binary(e, *op, l, r, record),
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let parts = (
                    self.profile(expr, false),
                    self.profile(low, false),
                    self.profile(high, false),
                );
                let ((x, tx), (lo, tl), (hi, th)) = (parts.0?, parts.1?, parts.2?);
                self.comparable(e.span, tx, tl)?;
                self.comparable(e.span, tx, th)?;
                let t = if *negated {
                    "__0 NOT BETWEEN __1 AND __2"
                } else {
                    "__0 BETWEEN __1 AND __2"
                };
                let holds = sql::expr(t, &[x.clone(), lo, hi]);
                self.leaf(e.span, Some(x), &holds, record);
                Some((holds, Ty::Bool))
            }
            ExprKind::InList {
                expr,
                list,
                negated,
            } => {
                let (x, tx) = self.profile(expr, false)?;
                let mut items = Vec::new();
                for item in list {
                    let (v, tv) = self.profile(item, false)?;
                    self.comparable(item.span, tx, tv)?;
                    items.push(v);
                }
                let holds = Expr::InList {
                    expr: Box::new(x.clone()),
                    list: items,
                    negated: *negated,
                };
                self.leaf(e.span, Some(x), &holds, record);
                Some((holds, Ty::Bool))
            }
            ExprKind::IsNull { expr, negated } => {
                let (x, _) = self.profile(expr, false)?;
                let t = if *negated {
                    "__0 IS NOT NULL"
                } else {
                    "__0 IS NULL"
                };
                let holds = sql::expr(t, std::slice::from_ref(&x));
                self.leaf(e.span, Some(x), &holds, record);
                Some((holds, Ty::Bool))
            }
            ExprKind::Str(op, l, r) => {
                let (x, p) = (self.profile(l, false), self.profile(r, false));
                let ((x, tx), (p, tp)) = (x?, p?);
                self.expect(l.span, tx, Ty::Text, "text operators take text")?;
                self.expect(r.span, tp, Ty::Text, "text operators take text")?;
                let holds = self.string_op(*op, x.clone(), p)?;
                self.leaf(e.span, Some(x), &holds, record);
                Some((holds, Ty::Bool))
            }
            ExprKind::Matches(l, regex) => {
                let (x, tx) = self.profile(l, false)?;
                self.expect(l.span, tx, Ty::Text, "`matches` takes text")?;
                if let Err(err) = regex::Regex::new(regex) {
                    self.error(e.span, format!("invalid regular expression: {err}"), "");
                    return None;
                }
                let args = [x.clone(), sql::string(regex, d)];
                let holds = match d {
                    Dialect::Datafusion => sql::expr("regexp_like(__0, __1)", &args),
                    Dialect::Postgres => sql::expr_in(d, "__0 ~ __1", &args),
                    Dialect::Duckdb => sql::expr("regexp_matches(__0, __1)", &args),
                    Dialect::Bigquery => sql::expr("REGEXP_CONTAINS(__0, __1)", &args),
                    Dialect::Snowflake => sql::expr("REGEXP_INSTR(__0, __1) > 0", &args),
                    Dialect::Mysql => sql::expr("REGEXP_LIKE(__0, __1)", &args),
                };
                self.leaf(e.span, Some(x), &holds, record);
                Some((holds, Ty::Bool))
            }
            ExprKind::Call(name, args) => self.call(e, name, args),
            ExprKind::Aggregate(agg) => {
                if self.no_events_here(e.span) {
                    return None;
                }
                let (x, ty) = self.aggregate(agg)?;
                if matches!(agg.kind, AggKind::Exists | AggKind::None) {
                    self.leaf(e.span, None, &x, record);
                }
                Some((x, ty))
            }
            ExprKind::DaysSinceEvent {
                first,
                selector,
                window,
            } => {
                if self.no_events_here(e.span) {
                    return None;
                }
                let (cond, lower, upper) = self.selection(selector, window.as_ref())?;
                let ts = sql::col("timestamp", d);
                let agg = self.filtered(if *first { "min" } else { "max" }, ts, cond.clone());
                let a = self.add_agg(agg, &cond, lower, upper);
                Some((self.days_since(a), Ty::Number))
            }
            ExprKind::Seq(steps) => {
                if self.no_events_here(e.span) {
                    return None;
                }
                let q = self.sequence(steps)?;
                let key = q.to_string();
                let i = match self.seqs.iter().position(|(k, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        self.seqs.push((key, q));
                        self.seqs.len() - 1
                    }
                };
                let holds = sql::expr(&format!("q{i}.profile_id IS NOT NULL"), &[]);
                self.leaf(e.span, None, &holds, record);
                Some((holds, Ty::Bool))
            }
            ExprKind::InSegment(name) => {
                if self.in_event {
                    self.error(
                        e.span,
                        "`in segment` is a profile condition, not an event one",
                        "",
                    );
                    return None;
                }
                let q = self.segment_ref(name)?;
                let i = match self.segments.iter().position(|(k, _)| *k == name.text) {
                    Some(i) => i,
                    None => {
                        self.segments.push((name.text.clone(), q));
                        self.segments.len() - 1
                    }
                };
                let holds = sql::expr(&format!("s{i}.profile_id IS NOT NULL"), &[]);
                self.leaf(e.span, None, &holds, record);
                Some((holds, Ty::Bool))
            }
        }
    }

    fn no_events_here(&mut self, span: ast::Span) -> bool {
        if self.in_event {
            self.error(
                span,
                "event aggregates and sequences are profile conditions; they cannot be used inside an event filter",
                "",
            );
        }
        self.in_event
    }

    fn literal(&self, l: &Literal) -> (Expr, Ty) {
        match l {
            Literal::Int(i) => (sql::number(&i.to_string()), Ty::Number),
            Literal::Decimal(s) => (sql::number(s), Ty::Number),
            Literal::Str(s) => (sql::string(s, self.d), Ty::Text),
            Literal::Bool(b) => (sql::boolean(*b), Ty::Bool),
            Literal::Null => (sql::null(), Ty::Null),
            Literal::Time(t) => (sql::timestamp(*t, self.d), Ty::Time),
        }
    }

    fn expect(&mut self, span: ast::Span, got: Ty, want: Ty, why: &str) -> Option<()> {
        if got.compatible(want) {
            Some(())
        } else {
            self.error(
                span,
                format!("expected a {}, found a {}", want.name(), got.name()),
                why,
            );
            None
        }
    }

    fn comparable(&mut self, span: ast::Span, a: Ty, b: Ty) -> Option<()> {
        if a.compatible(b) {
            Some(())
        } else {
            self.error(
                span,
                format!("cannot compare a {} with a {}", a.name(), b.name()),
                "both sides of a comparison must have the same type",
            );
            None
        }
    }

    fn binary(
        &mut self,
        e: &ast::Expr,
        op: BinOp,
        l: &ast::Expr,
        r: &ast::Expr,
        record: bool,
    ) -> Typed {
        let d = self.d;
        if let Some(t) = self.const_time(e) {
            return Some((sql::timestamp(t, d), Ty::Time));
        }
        match op {
            BinOp::And | BinOp::Or => {
                // Both sides first, so that errors on either side are all reported.
                let (a, b) = (self.profile(l, record), self.profile(r, record));
                let ((a, ta), (b, tb)) = (a?, b?);
                self.expect(l.span, ta, Ty::Bool, "`and`/`or` combine conditions")?;
                self.expect(r.span, tb, Ty::Bool, "`and`/`or` combine conditions")?;
                let t = if op == BinOp::And {
                    "__0 AND __1"
                } else {
                    "__0 OR __1"
                };
                Some((sql::nested(sql::expr(t, &[a, b])), Ty::Bool))
            }
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq => {
                let (a, b) = (self.profile(l, false), self.profile(r, false));
                let ((a, ta), (b, tb)) = (a?, b?);
                self.comparable(e.span, ta, tb)?;
                let sym = match op {
                    BinOp::Eq => "=",
                    BinOp::NotEq => "<>",
                    BinOp::Lt => "<",
                    BinOp::LtEq => "<=",
                    BinOp::Gt => ">",
                    _ => ">=",
                };
                let holds = sql::expr(&format!("__0 {sym} __1"), &[a.clone(), b]);
                self.leaf(e.span, Some(a), &holds, record);
                Some((holds, Ty::Bool))
            }
            BinOp::Add | BinOp::Sub if matches!(r.kind, ExprKind::Duration(_)) => {
                let ExprKind::Duration(dur) = r.kind else {
                    unreachable!()
                };
                let (a, ta) = self.profile(l, false)?;
                self.expect(l.span, ta, Ty::Time, "durations are added to times")?;
                let n = if op == BinOp::Sub { -dur.n } else { dur.n };
                Some((self.add_interval(a, n, dur.unit), Ty::Time))
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
                let (a, b) = (self.profile(l, false), self.profile(r, false));
                let ((a, ta), (b, tb)) = (a?, b?);
                let why = "arithmetic works on numbers; times take durations (`now - 30 days`)";
                self.expect(l.span, ta, Ty::Number, why)?;
                self.expect(r.span, tb, Ty::Number, why)?;
                let x = match op {
                    BinOp::Add => sql::expr("__0 + __1", &[a, b]),
                    BinOp::Sub => sql::expr("__0 - __1", &[a, b]),
                    BinOp::Mul => sql::expr("__0 * __1", &[a, b]),
                    // Division is exact (not integer division), and by zero gives null, in
                    // every engine alike.
                    _ => {
                        let t = match d {
                            Dialect::Postgres => "CAST(__0 AS DOUBLE PRECISION) / NULLIF(__1, 0)",
                            Dialect::Bigquery => "CAST(__0 AS FLOAT64) / NULLIF(__1, 0)",
                            _ => "CAST(__0 AS DOUBLE) / NULLIF(__1, 0)",
                        };
                        sql::expr_in(d, t, &[a, b])
                    }
                };
                Some((sql::nested(x), Ty::Number))
            }
        }
    }

    /// `now`, dates and constant arithmetic on them with durations, computed here so that the
    /// query sees a constant (which prunes files).
    fn const_time(&self, e: &ast::Expr) -> Option<DateTime<Utc>> {
        match &e.kind {
            ExprKind::Now => Some(self.now),
            ExprKind::Literal(Literal::Time(t)) => Some(*t),
            ExprKind::Binary(op @ (BinOp::Add | BinOp::Sub), l, r) => {
                let ExprKind::Duration(dur) = r.kind else {
                    return None;
                };
                let t = self.const_time(l)?;
                shift(t, if *op == BinOp::Sub { -dur.n } else { dur.n }, dur.unit)
            }
            _ => None,
        }
    }

    fn add_interval(&self, x: Expr, n: i64, unit: Unit) -> Expr {
        let (word, count) = match unit {
            Unit::Minute => ("minute", n),
            Unit::Hour => ("hour", n),
            Unit::Day => ("day", n),
            Unit::Week => ("day", n * 7),
            Unit::Month => ("month", n),
            Unit::Year => ("month", n * 12),
        };
        let upper = word.to_uppercase();
        let t = match self.d {
            Dialect::Datafusion | Dialect::Postgres | Dialect::Duckdb => {
                format!("__0 + INTERVAL '{count} {word}'")
            }
            Dialect::Mysql => format!("DATE_ADD(__0, INTERVAL {count} {upper})"),
            Dialect::Bigquery if word == "month" => {
                format!("TIMESTAMP(DATETIME_ADD(DATETIME(__0), INTERVAL {count} MONTH))")
            }
            Dialect::Bigquery => format!("TIMESTAMP_ADD(__0, INTERVAL {count} {upper})"),
            Dialect::Snowflake => format!("DATEADD({word}, {count}, __0)"),
        };
        sql::nested(sql::expr_in(self.d, &t, &[x]))
    }

    fn round6(&self, x: Expr) -> Expr {
        let t = if self.d == Dialect::Postgres {
            "round(CAST(__0 AS NUMERIC), 6)"
        } else {
            "round(__0, 6)"
        };
        sql::expr(t, &[x])
    }

    fn epoch(&self, x: Expr) -> Expr {
        let t = match self.d {
            Dialect::Datafusion => "date_part('epoch', __0)",
            Dialect::Postgres => "EXTRACT(EPOCH FROM __0)",
            Dialect::Duckdb => "epoch(__0)",
            Dialect::Bigquery => "UNIX_MICROS(__0) / 1000000",
            Dialect::Snowflake => "DATE_PART(epoch_second, __0)",
            Dialect::Mysql => "UNIX_TIMESTAMP(__0)",
        };
        sql::expr_in(self.d, t, &[x])
    }

    /// Whole days from `x` to the as-of time.
    fn days_since(&self, x: Expr) -> Expr {
        let now = self.now.timestamp_micros() as f64 / 1e6;
        let epoch = self.epoch(x);
        sql::expr(
            "floor((__0 - __1) / 86400)",
            &[sql::number(&format!("{now:.6}")), epoch],
        )
    }

    fn string_op(&mut self, op: StrOp, x: Expr, p: Expr) -> Option<Expr> {
        use Dialect::*;
        let t = match (op, self.d) {
            (StrOp::Contains, Snowflake) => "CONTAINS(__0, __1)",
            (StrOp::Contains, Mysql) => "LOCATE(__1, __0) > 0",
            (StrOp::Contains, _) => "strpos(__0, __1) > 0",
            (StrOp::StartsWith, Snowflake) => "STARTSWITH(__0, __1)",
            (StrOp::StartsWith, Mysql) => "LEFT(__0, CHAR_LENGTH(__1)) = __1",
            (StrOp::StartsWith, _) => "starts_with(__0, __1)",
            (StrOp::EndsWith, Snowflake) => "ENDSWITH(__0, __1)",
            (StrOp::EndsWith, Mysql) => "RIGHT(__0, CHAR_LENGTH(__1)) = __1",
            (StrOp::EndsWith, Postgres) => "right(__0, length(__1)) = __1",
            (StrOp::EndsWith, _) => "ends_with(__0, __1)",
        };
        Some(sql::expr_in(self.d, t, &[x, p]))
    }

    fn call(&mut self, e: &ast::Expr, name: &ast::Name, args: &[ast::Expr]) -> Typed {
        let fname = name.text.to_ascii_lowercase();
        let compiled: Vec<Typed> = args.iter().map(|a| self.profile(a, false)).collect();
        let compiled: Vec<(Expr, Ty)> = compiled.into_iter().collect::<Option<_>>()?;
        let arity = |c: &mut Self, lo: usize, hi: usize| {
            if compiled.len() < lo || compiled.len() > hi {
                let want = if lo == hi {
                    format!("{lo}")
                } else if hi == usize::MAX {
                    format!("at least {lo}")
                } else {
                    format!("{lo} or {hi}")
                };
                c.error(
                    e.span,
                    format!(
                        "`{fname}` takes {want} argument(s), found {}",
                        compiled.len()
                    ),
                    "",
                );
                return None;
            }
            Some(())
        };
        let exprs: Vec<Expr> = compiled.iter().map(|(x, _)| x.clone()).collect();
        match fname.as_str() {
            "lower" | "upper" => {
                arity(self, 1, 1)?;
                self.expect(args[0].span, compiled[0].1, Ty::Text, "it takes text")?;
                Some((sql::expr(&format!("{fname}(__0)"), &exprs), Ty::Text))
            }
            "length" => {
                arity(self, 1, 1)?;
                self.expect(args[0].span, compiled[0].1, Ty::Text, "it takes text")?;
                let t = if self.d == Dialect::Mysql {
                    "CHAR_LENGTH(__0)"
                } else {
                    "length(__0)"
                };
                Some((sql::expr(t, &exprs), Ty::Number))
            }
            "abs" => {
                arity(self, 1, 1)?;
                self.expect(args[0].span, compiled[0].1, Ty::Number, "it takes a number")?;
                Some((sql::expr("abs(__0)", &exprs), Ty::Number))
            }
            "round" => {
                arity(self, 1, 2)?;
                for (i, (_, t)) in compiled.iter().enumerate() {
                    self.expect(args[i].span, *t, Ty::Number, "it takes numbers")?;
                }
                let t = match (exprs.len(), self.d) {
                    // Postgres rounds to decimal places only numerics.
                    (2, Dialect::Postgres) => "round(CAST(__0 AS NUMERIC), __1)",
                    (2, _) => "round(__0, __1)",
                    _ => "round(__0)",
                };
                Some((sql::expr(t, &exprs), Ty::Number))
            }
            "coalesce" => {
                arity(self, 1, usize::MAX)?;
                let mut ty = Ty::Null;
                for (i, (_, t)) in compiled.iter().enumerate() {
                    self.comparable(args[i].span, ty, *t)?;
                    if *t != Ty::Null {
                        ty = *t;
                    }
                }
                let placeholders: Vec<String> =
                    (0..exprs.len()).map(|i| format!("__{i}")).collect();
                let t = format!("coalesce({})", placeholders.join(", "));
                Some((sql::expr(&t, &exprs), ty))
            }
            "days_since" => {
                arity(self, 1, 1)?;
                self.expect(args[0].span, compiled[0].1, Ty::Time, "it takes a time")?;
                Some((self.days_since(exprs[0].clone()), Ty::Number))
            }
            _ => {
                self.error(name.span, format!("unknown function `{}`", name.text), "");
                None
            }
        }
    }

    fn profile_field(&mut self, path: &[ast::Name]) -> Option<(Expr, Ty)> {
        let d = self.d;
        let joined: String = path
            .iter()
            .map(|n| n.text.as_str())
            .collect::<Vec<_>>()
            .join(".");
        let span = path[0].span.to(path[path.len() - 1].span);
        if path.len() == 2 && path[0].text.eq_ignore_ascii_case("consent") {
            let column = format!("consent_{}", path[1].text);
            if let Some(ty) = self.cat.profile.get(&column) {
                return Some((sql::qcol("p", &column, d), *ty));
            }
            let channels: Vec<&str> = self
                .cat
                .profile
                .keys()
                .filter_map(|k| k.strip_prefix("consent_"))
                .collect();
            let help = match closest(&path[1].text, channels.iter().copied()) {
                Some(c) => format!("did you mean `consent.{c}`?"),
                None if channels.is_empty() => "no profile has consent data yet".into(),
                None => format!("known channels: {}", channels.join(", ")),
            };
            self.error(
                span,
                format!("unknown consent channel `{}`", path[1].text),
                help,
            );
            return None;
        }
        if let Some(ty) = self.cat.profile.get(&joined) {
            return Some((sql::qcol("p", &joined, d), *ty));
        }
        if let Some(ty) = self.cat.traits.get(&joined) {
            self.uses_traits = true;
            return Some((sql::qcol("t", &joined, d), *ty));
        }
        let mut known: Vec<String> = self.cat.profile.keys().cloned().collect();
        known.extend(self.cat.traits.keys().cloned());
        known.extend(
            self.cat
                .profile
                .keys()
                .filter_map(|k| k.strip_prefix("consent_"))
                .map(|c| format!("consent.{c}")),
        );
        let mut help = match closest(&joined, known.iter().map(String::as_str)) {
            Some(k) => format!("did you mean `{k}`?"),
            None => "profile fields are the columns of `profiles` and `traits`".into(),
        };
        if self.cat.properties.contains_key(&joined) {
            help = format!(
                "`{joined}` is an event property; use it in an event filter or an aggregate, like `sum(purchase.{joined})`"
            );
        }
        self.error(span, format!("unknown profile field `{joined}`"), help);
        None
    }

    fn event_field(&mut self, path: &[ast::Name]) -> Option<(Expr, Ty)> {
        let d = self.d;
        let joined: String = path
            .iter()
            .map(|n| n.text.as_str())
            .collect::<Vec<_>>()
            .join(".");
        let span = path[0].span.to(path[path.len() - 1].span);
        match joined.as_str() {
            "timestamp" => return Some((sql::col("timestamp", d), Ty::Time)),
            "type" => return Some((sql::col("type", d), Ty::Text)),
            "source" => return Some((sql::col("source", d), Ty::Text)),
            "name" => {
                return Some((
                    sql::expr(
                        "coalesce(__0, __1)",
                        &[sql::col("event", d), sql::col("name", d)],
                    ),
                    Ty::Text,
                ));
            }
            _ => {}
        }
        let property = joined.strip_prefix("properties.").unwrap_or(&joined);
        if let Some(ty) = self.cat.properties.get(property) {
            return Some((sql::col(&format!("prop_{property}"), d), *ty));
        }
        let mut known: Vec<&str> = vec!["timestamp", "type", "name", "source"];
        known.extend(self.cat.properties.keys().map(String::as_str));
        let help = match closest(property, known.iter().copied()) {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!(
                "segments read typed properties; declare it in tribe.toml under [events.properties] (`{property} = \"double\"`) and re-ingest"
            ),
        };
        self.error(span, format!("unknown event property `{property}`"), help);
        None
    }

    /// The SQL condition of a selector (event context), with the selector's own time bounds.
    fn selector(&mut self, s: &ast::Selector) -> Option<Expr> {
        let d = self.d;
        let mut parts = Vec::new();
        match &s.base {
            SelectorBase::EventName(name, span) => {
                self.check_event_name(name, *span, None);
                parts.push(sql::expr(
                    "__0 = __1",
                    &[sql::col("event", d), sql::string(name, d)],
                ));
            }
            SelectorBase::Type { kind, name } => {
                parts.push(sql::expr(
                    "__0 = __1",
                    &[sql::col("type", d), sql::string(kind, d)],
                ));
                if let Some((name, span)) = name {
                    let column = if kind == "page" || kind == "screen" {
                        self.check_event_name(name, *span, Some(kind));
                        "name"
                    } else {
                        self.check_event_name(name, *span, None);
                        "event"
                    };
                    parts.push(sql::expr(
                        "__0 = __1",
                        &[sql::col(column, d), sql::string(name, d)],
                    ));
                }
            }
            SelectorBase::Named(name) => {
                let Some((file, def)) = self.lib.event(&name.text) else {
                    let known: Vec<&str> = self.lib.event_names().collect();
                    let help = match closest(&name.text, known.iter().copied()) {
                        Some(k) => format!("did you mean `{k}`?"),
                        None => format!(
                            "define it with `event {} = \"Event Name\"`, or write the event name in quotes",
                            name.text
                        ),
                    };
                    self.error(name.span, format!("unknown event `{}`", name.text), help);
                    return None;
                };
                if self
                    .stack
                    .iter()
                    .any(|s| s == &format!("event:{}", name.text))
                {
                    self.error(
                        name.span,
                        format!("event `{}` is defined in terms of itself", name.text),
                        "",
                    );
                    return None;
                }
                let saved = self.file;
                self.file = file;
                self.stack.push(format!("event:{}", name.text));
                let inner = self.selector(&def.selector);
                self.stack.pop();
                self.file = saved;
                parts.push(sql::nested(inner?));
            }
        }
        if let Some(filter) = &s.filter {
            let was = self.in_event;
            self.in_event = true;
            let f = self.profile(filter, false);
            self.in_event = was;
            let (f, ty) = f?;
            self.expect(
                filter.span,
                ty,
                Ty::Bool,
                "`where` takes a condition on the event",
            )?;
            parts.push(sql::nested(f));
        }
        Some(sql::and_all(parts))
    }

    fn check_event_name(&mut self, name: &str, span: ast::Span, view: Option<&str>) {
        let known: Vec<&str> = match view {
            Some(kind) => self
                .cat
                .view_names
                .get(kind)
                .map(|s| s.iter().map(String::as_str).collect())
                .unwrap_or_default(),
            None => self.cat.event_names.iter().map(String::as_str).collect(),
        };
        if known.contains(&name) {
            return;
        }
        let what = view.map_or("event".to_string(), |k| format!("{k} name"));
        let help = match closest(name, known.iter().copied()) {
            Some(k) => format!("did you mean \"{k}\"?"),
            None => "no such events have arrived; declare names of events still to come in tribe.toml under [segments] events = [...]".into(),
        };
        self.error(span, format!("no {what} \"{name}\" in the data"), help);
    }

    /// A selector and window: the condition, and the earliest and latest instant it reads.
    fn selection(
        &mut self,
        s: &ast::Selector,
        window: Option<&ast::Window>,
    ) -> Option<(Expr, Option<DateTime<Utc>>, DateTime<Utc>)> {
        let cond = self.selector(s)?;
        let (lower, lower_inclusive, upper) = self.bounds(window, s.span)?;
        let d = self.d;
        let ts = sql::col("timestamp", d);
        let mut parts = vec![sql::nested(cond)];
        if let Some(lo) = lower {
            let t = if lower_inclusive {
                "__0 >= __1"
            } else {
                "__0 > __1"
            };
            parts.push(sql::expr(t, &[ts.clone(), sql::timestamp(lo, d)]));
        }
        let (hi, inclusive) = upper;
        let t = if inclusive { "__0 <= __1" } else { "__0 < __1" };
        parts.push(sql::expr(t, &[ts, sql::timestamp(hi, d)]));
        Some((sql::and_all(parts), lower, hi))
    }

    /// (lower bound, whether it is inclusive, (upper bound, inclusive)) of a window; events
    /// after `now` never count, except under `in next`.
    #[allow(clippy::type_complexity)]
    fn bounds(
        &mut self,
        window: Option<&ast::Window>,
        span: ast::Span,
    ) -> Option<(Option<DateTime<Utc>>, bool, (DateTime<Utc>, bool))> {
        let now = self.now;
        let shifted = |c: &mut Self, n: i64, unit| {
            let t = shift(now, n, unit);
            if t.is_none() {
                c.error(
                    span,
                    "window reaches outside the representable time range",
                    "",
                );
            }
            t
        };
        Some(match window {
            None => (None, false, (now, true)),
            Some(ast::Window::Last(dur)) => {
                (Some(shifted(self, -dur.n, dur.unit)?), false, (now, true))
            }
            Some(ast::Window::Next(dur)) => {
                (Some(now), false, (shifted(self, dur.n, dur.unit)?, true))
            }
            Some(ast::Window::Since(t)) => (Some(*t), true, (now, true)),
            Some(ast::Window::Before(t)) => {
                if *t <= now {
                    (None, false, (*t, false))
                } else {
                    (None, false, (now, true))
                }
            }
            Some(ast::Window::Between(a, b)) => {
                if *b <= now {
                    (Some(*a), true, (*b, false))
                } else {
                    (Some(*a), true, (now, true))
                }
            }
        })
    }

    /// `f(x) FILTER (WHERE cond)`, or `f(CASE WHEN cond THEN x END)` where FILTER is missing.
    fn filtered(&self, f: &str, x: Expr, cond: Expr) -> Expr {
        if self.d.has_filter() {
            sql::expr(&format!("{f}(__0) FILTER (WHERE __1)"), &[x, cond])
        } else {
            sql::expr(&format!("{f}(CASE WHEN __1 THEN __0 END)"), &[x, cond])
        }
    }

    /// Adds an aggregate to the single pass over events (once), and returns its column.
    fn add_agg(
        &mut self,
        agg: Expr,
        cond: &Expr,
        lower: Option<DateTime<Utc>>,
        upper: DateTime<Utc>,
    ) -> Expr {
        self.agg_conditions.push(cond.clone());
        let key = agg.to_string();
        let i = match self.aggs.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.aggs.push((key, agg));
                self.agg_lower = match (self.agg_lower, lower) {
                    (Some(a), Some(b)) if self.aggs.len() > 1 => Some(a.min(b)),
                    (_, b) if self.aggs.len() == 1 => b,
                    _ => None,
                };
                self.agg_upper = if self.aggs.len() == 1 {
                    upper
                } else {
                    self.agg_upper.max(upper)
                };
                self.aggs.len() - 1
            }
        };
        sql::expr(&format!("a.a{i}"), &[])
    }

    fn aggregate(&mut self, agg: &ast::Aggregate) -> Typed {
        let d = self.d;
        let (cond, lower, upper) = self.selection(&agg.selector, agg.window.as_ref())?;
        let (prop, pty) = match &agg.property {
            Some(path) => {
                let was = self.in_event;
                self.in_event = true;
                let p = self.event_field(path);
                self.in_event = was;
                let (x, ty) = p?;
                (Some(x), ty)
            }
            None => (None, Ty::Null),
        };
        let ts = sql::col("timestamp", d);
        let one = sql::number("1");
        let zero = |x: Expr| sql::expr("coalesce(__0, 0)", &[x]);
        Some(match agg.kind {
            AggKind::Count | AggKind::Exists | AggKind::None => {
                let f = if d.has_filter() {
                    sql::expr("count(*) FILTER (WHERE __0)", std::slice::from_ref(&cond))
                } else {
                    self.filtered("count", one, cond.clone())
                };
                let a = zero(self.add_agg(f, &cond, lower, upper));
                match agg.kind {
                    AggKind::Count => (a, Ty::Number),
                    AggKind::Exists => (sql::expr("__0 > 0", &[a]), Ty::Bool),
                    _ => (sql::expr("__0 = 0", &[a]), Ty::Bool),
                }
            }
            AggKind::Sum | AggKind::Avg => {
                let x = prop?;
                if pty != Ty::Number {
                    let span = agg.selector.span;
                    self.error(
                        span,
                        format!(
                            "`sum`/`avg` need a number property, this one is {}",
                            pty.name()
                        ),
                        "",
                    );
                    return None;
                }
                let f = if agg.kind == AggKind::Sum {
                    "sum"
                } else {
                    "avg"
                };
                // Sums of floating-point values depend on the order of addition, which differs
                // between runs and engines (299.99999999999994 or 300.0); rounding to 6 decimal
                // places makes results reproducible and the same everywhere.
                let raw = self.filtered(f, x, cond.clone());
                let a = self.add_agg(self.round6(raw), &cond, lower, upper);
                if agg.kind == AggKind::Sum {
                    (zero(a), Ty::Number)
                } else {
                    (a, Ty::Number)
                }
            }
            AggKind::Min | AggKind::Max => {
                let f = if agg.kind == AggKind::Min {
                    "min"
                } else {
                    "max"
                };
                let a = self.add_agg(self.filtered(f, prop?, cond.clone()), &cond, lower, upper);
                (a, pty)
            }
            AggKind::CountDistinct => {
                // Its own grouped pass over the selected events: DataFusion computes a distinct
                // count with one hash set per group, and one such aggregate would take the
                // whole single-pass aggregation off its vectorised path.
                let x = prop?;
                let filter = self.scan_filter(vec![cond], lower, upper);
                let q = sql::query(
                    "SELECT profile_id, count(*) AS n FROM (SELECT DISTINCT profile_id, __0 AS v \
                     FROM profile_events WHERE __1 AND __0 IS NOT NULL) AS d GROUP BY profile_id",
                    &[x, filter],
                );
                let key = q.to_string();
                let i = match self.distincts.iter().position(|(k, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        self.distincts.push((key, q));
                        self.distincts.len() - 1
                    }
                };
                (zero(sql::expr(&format!("c{i}.n"), &[])), Ty::Number)
            }
            AggKind::First | AggKind::Last => {
                let x = prop?;
                let first = agg.kind == AggKind::First;
                let mid = sql::col("message_id", d);
                let args = [x, cond.clone(), ts, mid];
                let t = match (d, first) {
                    (Dialect::Datafusion, true) => {
                        "first_value(__0 ORDER BY __2, __3) FILTER (WHERE __1 AND __0 IS NOT NULL)"
                    }
                    (Dialect::Datafusion, false) => {
                        "last_value(__0 ORDER BY __2, __3) FILTER (WHERE __1 AND __0 IS NOT NULL)"
                    }
                    (Dialect::Duckdb, true) => {
                        "first(__0 ORDER BY __2, __3) FILTER (WHERE __1 AND __0 IS NOT NULL)"
                    }
                    (Dialect::Duckdb, false) => {
                        "last(__0 ORDER BY __2, __3) FILTER (WHERE __1 AND __0 IS NOT NULL)"
                    }
                    (Dialect::Postgres, true) => {
                        "(array_agg(__0 ORDER BY __2, __3) FILTER (WHERE __1 AND __0 IS NOT NULL))[1]"
                    }
                    (Dialect::Postgres, false) => {
                        "(array_agg(__0 ORDER BY __2 DESC, __3 DESC) FILTER (WHERE __1 AND __0 IS NOT NULL))[1]"
                    }
                    (Dialect::Bigquery, true) => {
                        "ARRAY_AGG(CASE WHEN __1 THEN __0 END IGNORE NULLS ORDER BY __2, __3 LIMIT 1)[SAFE_OFFSET(0)]"
                    }
                    (Dialect::Bigquery, false) => {
                        "ARRAY_AGG(CASE WHEN __1 THEN __0 END IGNORE NULLS ORDER BY __2 DESC, __3 DESC LIMIT 1)[SAFE_OFFSET(0)]"
                    }
                    (Dialect::Snowflake, true) => {
                        "GET(ARRAY_AGG(CASE WHEN __1 THEN __0 END) WITHIN GROUP (ORDER BY __2, __3), 0)"
                    }
                    (Dialect::Snowflake, false) => {
                        "GET(ARRAY_AGG(CASE WHEN __1 THEN __0 END) WITHIN GROUP (ORDER BY __2 DESC, __3 DESC), 0)"
                    }
                    (Dialect::Mysql, _) => {
                        let span = agg.selector.span;
                        self.error(span, "`first`/`last` cannot be printed for MySQL, which has no ordered aggregates", "compile for another dialect");
                        return None;
                    }
                };
                (
                    self.add_agg(sql::expr_in(d, t, &args), &cond, lower, upper),
                    pty,
                )
            }
        })
    }

    /// The one aggregation over `profile_events` that computes every aggregate.
    fn aggregation_query(&self) -> Query {
        let mut projection = String::new();
        for i in 0..self.aggs.len() {
            projection.push_str(&format!(", __{} AS a{i}", i + 1));
        }
        let mut args =
            vec![self.scan_filter(self.agg_conditions.clone(), self.agg_lower, self.agg_upper)];
        args.extend(self.aggs.iter().map(|(_, e)| e.clone()));
        sql::query(
            &format!(
                "SELECT profile_id{projection} FROM profile_events WHERE __0 GROUP BY profile_id"
            ),
            &args,
        )
    }

    /// What a scan of `profile_events` keeps: rows with a profile that some condition wants,
    /// in the days between `lower` and `upper` (the partition column prunes whole days).
    fn scan_filter(
        &self,
        conditions: Vec<Expr>,
        lower: Option<DateTime<Utc>>,
        upper: DateTime<Utc>,
    ) -> Expr {
        let d = self.d;
        let day = sql::col("day", d);
        let mut parts = vec![sql::expr("profile_id IS NOT NULL", &[])];
        if let Some(lo) = lower {
            parts.push(sql::expr("__0 >= __1", &[day.clone(), sql::date(lo)]));
        }
        parts.push(sql::expr("__0 <= __1", &[day, sql::date(upper)]));
        let mut seen = BTreeSet::new();
        let distinct: Vec<Expr> = conditions
            .into_iter()
            .filter(|c| seen.insert(c.to_string()))
            .map(sql::nested)
            .collect();
        parts.push(sql::nested(sql::or_all(distinct)));
        sql::and_all(parts)
    }

    /// A sequence as a query of the profiles that have a matching chain of events.
    fn sequence(&mut self, steps: &[ast::Step]) -> Option<Query> {
        let d = self.d;
        let ts = sql::col("timestamp", d);
        let mut args: Vec<Expr> = vec![ts.clone(), sql::timestamp(self.now, d)];
        let mut from = String::new();
        let mut on_first_lower = None;
        let positives: Vec<&ast::Step> = steps.iter().filter(|s| !s.negated).collect();
        let negative = steps.iter().find(|s| s.negated);
        let mut conds = Vec::new();
        for (i, step) in positives.iter().enumerate() {
            let (cond, lower, upper) = self.selection(&step.selector, step.window.as_ref())?;
            if i == 0 {
                on_first_lower = lower;
            }
            conds.push((cond, lower, upper));
        }
        for (i, (cond, lower, upper)) in conds.into_iter().enumerate() {
            // Later steps come after the first, so the first step's lower bound prunes them too.
            let lower = lower.or(on_first_lower).max(on_first_lower);
            let filter = self.scan_filter(vec![cond], lower, upper);
            args.push(filter);
            let f = args.len() - 1;
            let sub =
                format!("(SELECT profile_id, __0 AS t FROM profile_events WHERE __{f}) AS s{i}");
            if i == 0 {
                from.push_str(&sub);
                continue;
            }
            let mut on = format!(
                "s{i}.profile_id = s{p}.profile_id AND s{i}.t > s{p}.t",
                p = i - 1
            );
            if let Some(within) = positives[i].within {
                args.push(self.add_interval(
                    sql::expr(&format!("s{}.t", i - 1), &[]),
                    within.n,
                    within.unit,
                ));
                on.push_str(&format!(" AND s{i}.t <= __{}", args.len() - 1));
            }
            from.push_str(&format!(" JOIN {sub} ON {on}"));
        }
        let last = positives.len() - 1;
        let mut where_clause = String::new();
        if let Some(neg) = negative {
            let cond = self.selector(&neg.selector)?;
            let (lower, lower_incl, (hi, hi_incl)) =
                self.bounds(neg.window.as_ref(), neg.selector.span)?;
            let mut parts = vec![sql::nested(cond)];
            let nts = sql::qcol("n", "timestamp", d);
            if let Some(lo) = lower {
                let t = if lower_incl {
                    "__0 >= __1"
                } else {
                    "__0 > __1"
                };
                parts.push(sql::expr(t, &[nts.clone(), sql::timestamp(lo, d)]));
            }
            let t = if hi_incl { "__0 <= __1" } else { "__0 < __1" };
            parts.push(sql::expr(t, &[nts.clone(), sql::timestamp(hi, d)]));
            // The events that may break the chain come after its first step, so the first
            // step's window prunes their days too.
            let nday = sql::qcol("n", "day", d);
            if let Some(lo) = on_first_lower.max(lower) {
                parts.push(sql::expr("__0 >= __1", &[nday.clone(), sql::date(lo)]));
            }
            parts.push(sql::expr("__0 <= __1", &[nday, sql::date(hi)]));
            let prev_t = sql::expr(&format!("s{last}.t"), &[]);
            parts.push(sql::expr("__0 > __1", &[nts.clone(), prev_t.clone()]));
            let end = match neg.within {
                Some(w) => self.add_interval(prev_t, w.n, w.unit),
                None => sql::timestamp(self.now, d),
            };
            parts.push(sql::expr("__0 <= __1", &[nts, end.clone()]));
            args.push(sql::and_all(parts));
            let n_cond = args.len() - 1;
            args.push(end);
            let end_i = args.len() - 1;
            where_clause = format!(
                " WHERE __{end_i} <= __1 AND NOT EXISTS (SELECT 1 FROM profile_events AS n WHERE n.profile_id = s{last}.profile_id AND __{n_cond})"
            );
        }
        Some(sql::query(
            &format!("SELECT DISTINCT s0.profile_id FROM {from}{where_clause}"),
            &args,
        ))
    }

    fn segment_ref(&mut self, name: &ast::Name) -> Option<Query> {
        if let Some(pos) = self.stack.iter().position(|s| *s == name.text) {
            let mut cycle: Vec<String> = self.stack[pos..]
                .iter()
                .filter(|s| !s.starts_with("event:"))
                .cloned()
                .collect();
            cycle.push(name.text.clone());
            self.error(
                name.span,
                format!(
                    "segments refer to each other in a cycle: {}",
                    cycle.join(" -> ")
                ),
                "a segment cannot depend on itself, directly or through others",
            );
            return None;
        }
        if self.lib.segment(&name.text).is_none() {
            let known: Vec<&str> = self.lib.segment_names().collect();
            let help = closest(&name.text, known.iter().copied())
                .map(|k| format!("did you mean `{k}`?"))
                .unwrap_or_else(|| {
                    "segments are defined in the .seg files of the workspace".into()
                });
            self.error(name.span, format!("unknown segment `{}`", name.text), help);
            return None;
        }
        match compile_inner(self.lib, self.cat, &name.text, self.now, self.d, self.stack) {
            Ok(c) => Some(c.members()),
            Err(errors) => {
                let cycle = errors
                    .iter()
                    .find(|(_, e)| e.message.contains("cycle"))
                    .cloned();
                match cycle {
                    Some((_, e)) if !self.errors.iter().any(|(_, x)| x.message == e.message) => {
                        self.error(name.span, e.message, e.help.unwrap_or_default());
                    }
                    _ => self.error(
                        name.span,
                        format!("segment `{}` has errors", name.text),
                        "`tribe segment check` lists them",
                    ),
                }
                None
            }
        }
    }
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
