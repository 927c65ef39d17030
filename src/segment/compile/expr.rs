//! Profile-context expressions: literals, fields, operators, functions and their types.

use super::*;

impl Compiler<'_> {
    /// Compiles an expression; `record` says whether its leaves are reported by `why`.
    pub(super) fn profile(&mut self, e: &ast::Expr, record: bool) -> Typed {
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
                let sel = self.selection(selector, window.as_ref())?;
                let ts = sql::col("timestamp", d);
                let agg = self.filtered(if *first { "min" } else { "max" }, ts, sel.cond.clone());
                let merge = if *first { Merge::Min } else { Merge::Max };
                let a = self.add_agg(agg, merge, &sel);
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

    pub(super) fn no_events_here(&mut self, span: ast::Span) -> bool {
        if self.in_event {
            self.error(
                span,
                "event aggregates and sequences are profile conditions; they cannot be used inside an event filter",
                "",
            );
        }
        self.in_event
    }

    pub(super) fn literal(&self, l: &Literal) -> (Expr, Ty) {
        match l {
            Literal::Int(i) => (sql::number(&i.to_string()), Ty::Number),
            Literal::Decimal(s) => (sql::number(s), Ty::Number),
            Literal::Str(s) => (sql::string(s, self.d), Ty::Text),
            Literal::Bool(b) => (sql::boolean(*b), Ty::Bool),
            Literal::Null => (sql::null(), Ty::Null),
            Literal::Time(t) => (sql::timestamp(*t, self.d), Ty::Time),
        }
    }

    pub(super) fn expect(&mut self, span: ast::Span, got: Ty, want: Ty, why: &str) -> Option<()> {
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

    pub(super) fn comparable(&mut self, span: ast::Span, a: Ty, b: Ty) -> Option<()> {
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

    pub(super) fn binary(
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
    pub(super) fn const_time(&self, e: &ast::Expr) -> Option<DateTime<Utc>> {
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

    pub(super) fn call(&mut self, e: &ast::Expr, name: &ast::Name, args: &[ast::Expr]) -> Typed {
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

    pub(super) fn profile_field(&mut self, path: &[ast::Name]) -> Option<(Expr, Ty)> {
        let d = self.d;
        let (joined, span) = dotted(path);
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
}
