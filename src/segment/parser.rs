//! Recursive-descent parser from tokens to the syntax tree of `ast`. A syntax error abandons the
//! definition it is in and parsing resumes at the next `event` or `segment` definition, so one
//! run reports the errors of every definition of a file.

use crate::segment::ast::*;
use crate::segment::diag::Diagnostic;
use crate::segment::lexer::{Tok, Token, lex};

/// The definitions of one file and every syntax error in it.
pub fn parse(text: &str) -> (Vec<Definition>, Vec<Diagnostic>) {
    let (tokens, mut errors) = lex(text);
    let mut p = Parser { tokens, pos: 0 };
    let mut defs = Vec::new();
    while !p.at_eof() {
        match p.definition() {
            Ok(def) => defs.push(def),
            Err(e) => {
                errors.push(e);
                p.recover();
            }
        }
    }
    errors.sort_by_key(|d| d.span.start);
    (defs, errors)
}

/// Parses one expression on its own (for tests and tools).
pub fn parse_expr(text: &str) -> Result<Expr, Diagnostic> {
    let (tokens, errors) = lex(text);
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let mut p = Parser { tokens, pos: 0 };
    let e = p.expr()?;
    if !p.at_eof() {
        return Err(p.unexpected("the end of the expression"));
    }
    Ok(e)
}

type PResult<T> = Result<T, Diagnostic>;

/// Message types that select events by type.
const TYPES: &[&str] = &["page", "screen", "track", "identify", "group", "alias"];
const FUNCTIONS: &[&str] = &[
    "lower",
    "upper",
    "length",
    "coalesce",
    "abs",
    "round",
    "days_since",
];

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos]
    }

    fn peek_at(&self, k: usize) -> &Tok {
        &self.tokens[(self.pos + k).min(self.tokens.len() - 1)].tok
    }

    fn at_eof(&self) -> bool {
        self.peek().tok == Tok::Eof
    }

    fn bump(&mut self) -> Token {
        let t = self.tokens[self.pos].clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn prev_end(&self) -> usize {
        self.tokens[self.pos.saturating_sub(1)].span.end
    }

    fn is_word(&self, k: usize, word: &str) -> bool {
        matches!(self.peek_at(k), Tok::Word(w) if w.eq_ignore_ascii_case(word))
    }

    fn is_sym(&self, sym: &str) -> bool {
        matches!(self.peek().tok, Tok::Sym(s) if s == sym)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.is_word(0, word) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        if self.is_sym(sym) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn unexpected(&self, expected: &str) -> Diagnostic {
        let t = self.peek();
        let found = match &t.tok {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(s) => format!("string \"{s}\""),
            Tok::Int(i) => format!("number {i}"),
            Tok::Decimal(d) => format!("number {d}"),
            Tok::Time(_) => "a date".to_string(),
            Tok::Sym(s) => format!("`{s}`"),
            Tok::Eof => "the end of the file".to_string(),
        };
        Diagnostic::new(t.span, format!("expected {expected}, found {found}"))
    }

    fn expect_sym(&mut self, sym: &str) -> PResult<()> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{sym}`")))
        }
    }

    fn expect_word(&mut self, word: &str) -> PResult<()> {
        if self.eat_word(word) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{word}`")))
        }
    }

    fn name(&mut self, what: &str) -> PResult<Name> {
        match &self.peek().tok {
            Tok::Word(w) => {
                let text = w.clone();
                let span = self.bump().span;
                Ok(Name { text, span })
            }
            _ => Err(self.unexpected(what)),
        }
    }

    /// Skips to the start of the next definition.
    fn recover(&mut self) {
        if !self.at_definition() {
            self.bump();
        }
        while !self.at_eof() && !self.at_definition() {
            self.bump();
        }
    }

    fn at_definition(&self) -> bool {
        let named = matches!(self.peek_at(1), Tok::Word(_));
        (self.is_word(0, "event") && named && matches!(self.peek_at(2), Tok::Sym("=")))
            || (self.is_word(0, "segment")
                && named
                && matches!(self.peek_at(2), Tok::Sym("=") | Tok::Str(_)))
    }

    fn definition(&mut self) -> PResult<Definition> {
        let start = self.peek().span.start;
        if self.eat_word("event") {
            let name = self.name("an event name")?;
            self.expect_sym("=")?;
            let sel_start = self.peek().span.start;
            let base = self.selector_base()?;
            let filter = if self.eat_word("where") {
                Some(Box::new(self.expr()?))
            } else {
                None
            };
            let span = Span::new(sel_start, self.prev_end());
            self.end_of_definition()?;
            return Ok(Definition::Event(EventDef {
                name,
                selector: Selector { base, filter, span },
            }));
        }
        if self.eat_word("segment") {
            let name = self.name("a segment name")?;
            let title = match &self.peek().tok {
                Tok::Str(s) => {
                    let s = s.clone();
                    self.bump();
                    Some(s)
                }
                _ => None,
            };
            self.expect_sym("=")?;
            let expr = self.expr()?;
            let span = Span::new(start, self.prev_end());
            self.end_of_definition()?;
            return Ok(Definition::Segment(SegmentDef {
                name,
                title,
                expr,
                span,
            }));
        }
        Err(self.unexpected("`event` or `segment`"))
    }

    fn end_of_definition(&self) -> PResult<()> {
        if self.at_eof() || self.at_definition() {
            Ok(())
        } else {
            Err(self.unexpected("an operator or the next definition"))
        }
    }

    /// `"Event Name"`, a named event, or a message type with an optional name.
    fn selector_base(&mut self) -> PResult<SelectorBase> {
        match self.peek().tok.clone() {
            Tok::Str(s) => {
                let span = self.bump().span;
                Ok(SelectorBase::EventName(s, span))
            }
            Tok::Word(w) if TYPES.contains(&w.to_ascii_lowercase().as_str()) => {
                self.bump();
                let name = match self.peek().tok.clone() {
                    Tok::Str(s) => Some((s, self.bump().span)),
                    _ => None,
                };
                Ok(SelectorBase::Type {
                    kind: w.to_ascii_lowercase(),
                    name,
                })
            }
            Tok::Word(_) => Ok(SelectorBase::Named(self.name("an event")?)),
            _ => Err(self.unexpected("an event name in quotes, a named event, or page/screen")),
        }
    }

    /// A selector inside an aggregate: `purchase`, `"Order Completed"`, `page "Pricing"`, or
    /// `("Order Completed" where revenue > 100)`.
    fn selector(&mut self) -> PResult<Selector> {
        let start = self.peek().span.start;
        if self.eat_sym("(") {
            let base = self.selector_base()?;
            let filter = if self.eat_word("where") {
                Some(Box::new(self.expr()?))
            } else {
                None
            };
            self.expect_sym(")")?;
            return Ok(Selector {
                base,
                filter,
                span: Span::new(start, self.prev_end()),
            });
        }
        let base = self.selector_base()?;
        Ok(Selector {
            base,
            filter: None,
            span: Span::new(start, self.prev_end()),
        })
    }

    fn duration(&mut self) -> PResult<Duration> {
        let n = match self.peek().tok {
            Tok::Int(n) => {
                self.bump();
                n
            }
            _ => return Err(self.unexpected("a whole number of units, like `30 days`")),
        };
        let unit = match &self.peek().tok {
            Tok::Word(w) => Unit::parse(w),
            _ => None,
        };
        match unit {
            Some(unit) => {
                self.bump();
                Ok(Duration { n, unit })
            }
            None => Err(self.unexpected("a unit: minutes, hours, days, weeks, months or years")),
        }
    }

    fn time_literal(&mut self) -> PResult<chrono::DateTime<chrono::Utc>> {
        match self.peek().tok {
            Tok::Time(t) => {
                self.bump();
                Ok(t)
            }
            _ => Err(self.unexpected("a date like 2026-01-31")),
        }
    }

    fn window(&mut self) -> PResult<Option<Window>> {
        if self.is_word(0, "in") && (self.is_word(1, "last") || self.is_word(1, "next")) {
            let last = self.is_word(1, "last");
            self.bump();
            self.bump();
            let d = self.duration()?;
            return Ok(Some(if last {
                Window::Last(d)
            } else {
                Window::Next(d)
            }));
        }
        if self.eat_word("since") {
            return Ok(Some(Window::Since(self.time_literal()?)));
        }
        if self.eat_word("before") {
            return Ok(Some(Window::Before(self.time_literal()?)));
        }
        if self.eat_word("between") {
            let a = self.time_literal()?;
            self.expect_word("and")?;
            let b = self.time_literal()?;
            return Ok(Some(Window::Between(a, b)));
        }
        Ok(None)
    }

    pub fn expr(&mut self) -> PResult<Expr> {
        let mut left = self.and()?;
        while self.eat_word("or") {
            let right = self.and()?;
            left = binary(BinOp::Or, left, right);
        }
        Ok(left)
    }

    fn and(&mut self) -> PResult<Expr> {
        let mut left = self.not()?;
        while self.eat_word("and") {
            let right = self.not()?;
            left = binary(BinOp::And, left, right);
        }
        Ok(left)
    }

    fn not(&mut self) -> PResult<Expr> {
        let start = self.peek().span.start;
        if self.eat_word("not") {
            let inner = self.not()?;
            let span = Span::new(start, inner.span.end);
            return Ok(Expr {
                kind: ExprKind::Not(Box::new(inner)),
                span,
            });
        }
        self.comparison()
    }

    fn comparison(&mut self) -> PResult<Expr> {
        let left = self.additive()?;
        let start = left.span.start;
        let op = match self.peek().tok {
            Tok::Sym("=") => Some(BinOp::Eq),
            Tok::Sym("!=") => Some(BinOp::NotEq),
            Tok::Sym("<") => Some(BinOp::Lt),
            Tok::Sym("<=") => Some(BinOp::LtEq),
            Tok::Sym(">") => Some(BinOp::Gt),
            Tok::Sym(">=") => Some(BinOp::GtEq),
            _ => None,
        };
        if let Some(op) = op {
            self.bump();
            let right = self.additive()?;
            return Ok(binary(op, left, right));
        }
        let negated =
            self.is_word(0, "not") && (self.is_word(1, "in") || self.is_word(1, "between"));
        if negated {
            self.bump();
        }
        let finish = |p: &Parser, kind| Expr {
            kind,
            span: Span::new(start, p.prev_end()),
        };
        if self.eat_word("between") {
            let low = self.additive()?;
            self.expect_word("and")?;
            let high = self.additive()?;
            return Ok(finish(
                self,
                ExprKind::Between {
                    expr: Box::new(left),
                    low: Box::new(low),
                    high: Box::new(high),
                    negated,
                },
            ));
        }
        if self.eat_word("in") {
            self.expect_sym("(")?;
            let mut list = vec![self.additive()?];
            while self.eat_sym(",") {
                list.push(self.additive()?);
            }
            self.expect_sym(")")?;
            return Ok(finish(
                self,
                ExprKind::InList {
                    expr: Box::new(left),
                    list,
                    negated,
                },
            ));
        }
        if self.eat_word("is") {
            let negated = self.eat_word("not");
            self.expect_word("null")?;
            return Ok(finish(
                self,
                ExprKind::IsNull {
                    expr: Box::new(left),
                    negated,
                },
            ));
        }
        let str_op = if self.eat_word("contains") {
            Some(StrOp::Contains)
        } else if self.is_word(0, "starts") && self.is_word(1, "with") {
            self.bump();
            self.bump();
            Some(StrOp::StartsWith)
        } else if self.is_word(0, "ends") && self.is_word(1, "with") {
            self.bump();
            self.bump();
            Some(StrOp::EndsWith)
        } else {
            None
        };
        if let Some(op) = str_op {
            let right = self.additive()?;
            return Ok(finish(
                self,
                ExprKind::Str(op, Box::new(left), Box::new(right)),
            ));
        }
        if self.eat_word("matches") {
            let regex = match self.peek().tok.clone() {
                Tok::Str(s) => {
                    self.bump();
                    s
                }
                _ => return Err(self.unexpected("a regular expression in quotes")),
            };
            return Ok(finish(self, ExprKind::Matches(Box::new(left), regex)));
        }
        Ok(left)
    }

    fn additive(&mut self) -> PResult<Expr> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek().tok {
                Tok::Sym("+") => BinOp::Add,
                Tok::Sym("-") => BinOp::Sub,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.multiplicative()?;
            left = binary(op, left, right);
        }
    }

    fn multiplicative(&mut self) -> PResult<Expr> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek().tok {
                Tok::Sym("*") => BinOp::Mul,
                Tok::Sym("/") => BinOp::Div,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.unary()?;
            left = binary(op, left, right);
        }
    }

    fn unary(&mut self) -> PResult<Expr> {
        let start = self.peek().span.start;
        if self.eat_sym("-") {
            let inner = self.unary()?;
            let span = Span::new(start, inner.span.end);
            return Ok(Expr {
                kind: ExprKind::Neg(Box::new(inner)),
                span,
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> PResult<Expr> {
        if self.at_definition() {
            return Err(self.unexpected("a value"));
        }
        let token = self.peek().clone();
        let start = token.span.start;
        let done = |p: &Parser, kind| {
            Ok(Expr {
                kind,
                span: Span::new(start, p.prev_end()),
            })
        };
        match token.tok {
            Tok::Int(n) => {
                self.bump();
                if let Tok::Word(w) = self.peek_at(0)
                    && let Some(unit) = Unit::parse(w)
                {
                    self.bump();
                    return done(self, ExprKind::Duration(Duration { n, unit }));
                }
                done(self, ExprKind::Literal(Literal::Int(n)))
            }
            Tok::Decimal(d) => {
                self.bump();
                done(self, ExprKind::Literal(Literal::Decimal(d)))
            }
            Tok::Str(s) => {
                self.bump();
                done(self, ExprKind::Literal(Literal::Str(s)))
            }
            Tok::Time(t) => {
                self.bump();
                done(self, ExprKind::Literal(Literal::Time(t)))
            }
            Tok::Sym("(") => {
                self.bump();
                let inner = self.expr()?;
                self.expect_sym(")")?;
                Ok(Expr {
                    kind: inner.kind,
                    span: Span::new(start, self.prev_end()),
                })
            }
            Tok::Word(w) => {
                let lower = w.to_ascii_lowercase();
                match lower.as_str() {
                    "true" | "false" => {
                        self.bump();
                        done(self, ExprKind::Literal(Literal::Bool(lower == "true")))
                    }
                    "null" => {
                        self.bump();
                        done(self, ExprKind::Literal(Literal::Null))
                    }
                    "now" => {
                        self.bump();
                        done(self, ExprKind::Now)
                    }
                    "in" if self.is_word(1, "segment") => {
                        self.bump();
                        self.bump();
                        let name = self.name("a segment name")?;
                        done(self, ExprKind::InSegment(name))
                    }
                    "seq" if matches!(self.peek_at(1), Tok::Sym("(")) => {
                        self.bump();
                        self.bump();
                        let steps = self.steps()?;
                        self.expect_sym(")")?;
                        done(self, ExprKind::Seq(steps))
                    }
                    _ if matches!(self.peek_at(1), Tok::Sym("(")) => self.call(),
                    _ => {
                        let mut path = vec![self.name("a name")?];
                        while self.eat_sym(".") {
                            path.push(self.name("a field name after `.`")?);
                        }
                        done(self, ExprKind::Field(path))
                    }
                }
            }
            _ => Err(self.unexpected("a value, a name or `(`")),
        }
    }

    fn call(&mut self) -> PResult<Expr> {
        let name = self.name("a function")?;
        let start = name.span.start;
        self.expect_sym("(")?;
        let lower = name.text.to_ascii_lowercase();
        if lower == "days_since" && (self.is_word(0, "first") || self.is_word(0, "last")) {
            // `days_since(last purchase)` (an event) or `days_since(last(purchase.timestamp))`
            // (an expression): try the event form first, and fall back.
            let saved = self.pos;
            let first = self.is_word(0, "first");
            self.bump();
            let event_form = self.selector().and_then(|selector| {
                let window = self.window()?;
                self.expect_sym(")")?;
                Ok((selector, window))
            });
            match event_form {
                Ok((selector, window)) => {
                    return Ok(Expr {
                        kind: ExprKind::DaysSinceEvent {
                            first,
                            selector,
                            window,
                        },
                        span: Span::new(start, self.prev_end()),
                    });
                }
                Err(_) => self.pos = saved,
            }
        }
        if let Some(kind) = AggKind::parse(&lower) {
            let selector = self.selector()?;
            let mut property = None;
            if self.is_sym(".") {
                let mut path = Vec::new();
                while self.eat_sym(".") {
                    path.push(self.name("a property name after `.`")?);
                }
                property = Some(path);
            }
            let window = self.window()?;
            self.expect_sym(")")?;
            let span = Span::new(start, self.prev_end());
            if kind.takes_property() && property.is_none() {
                return Err(Diagnostic::new(
                    span,
                    format!("`{lower}` needs a property of the events"),
                )
                .help(format!(
                    "write `{lower}(event.property)`, for example `{lower}(purchase.revenue)`"
                )));
            }
            if !kind.takes_property() && property.is_some() {
                return Err(Diagnostic::new(span, format!("`{lower}` counts events and takes no property"))
                    .help(format!("write `{lower}(event)`; for distinct values use `count_distinct(event.property)`")));
            }
            return Ok(Expr {
                kind: ExprKind::Aggregate(Box::new(Aggregate {
                    kind,
                    selector,
                    property,
                    window,
                })),
                span,
            });
        }
        if !FUNCTIONS.contains(&lower.as_str()) {
            let known: Vec<&str> = FUNCTIONS
                .iter()
                .copied()
                .chain([
                    "count",
                    "sum",
                    "avg",
                    "min",
                    "max",
                    "count_distinct",
                    "first",
                    "last",
                    "exists",
                    "none",
                    "seq",
                ])
                .collect();
            let mut d = Diagnostic::new(name.span, format!("unknown function `{}`", name.text));
            d = match crate::segment::diag::closest(&name.text, known.iter().copied()) {
                Some(k) => d.help(format!("did you mean `{k}`?")),
                None => d.help(format!("functions are: {}", known.join(", "))),
            };
            return Err(d);
        }
        let mut args = Vec::new();
        if !self.is_sym(")") {
            args.push(self.expr()?);
            while self.eat_sym(",") {
                args.push(self.expr()?);
            }
        }
        self.expect_sym(")")?;
        Ok(Expr {
            kind: ExprKind::Call(name, args),
            span: Span::new(start, self.prev_end()),
        })
    }

    fn steps(&mut self) -> PResult<Vec<Step>> {
        let selector = self.selector()?;
        let window = self.window()?;
        let mut steps = vec![Step {
            selector,
            window,
            negated: false,
            within: None,
        }];
        while self.eat_word("then") {
            if steps.last().is_some_and(|s| s.negated) {
                return Err(Diagnostic::new(
                    self.tokens[self.pos - 1].span,
                    "`then not` must be the last step of a sequence",
                ));
            }
            let negated = self.eat_word("not");
            let selector = self.selector()?;
            let window = self.window()?;
            let within = if self.eat_word("within") {
                Some(self.duration()?)
            } else {
                None
            };
            steps.push(Step {
                selector,
                window,
                negated,
                within,
            });
        }
        if steps.len() < 2 {
            return Err(self.unexpected("`then` and a second step"));
        }
        Ok(steps)
    }
}

fn binary(op: BinOp, left: Expr, right: Expr) -> Expr {
    let span = left.span.to(right.span);
    Expr {
        kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reference_example() {
        let text = r#"
event purchase  = "Order Completed"
event big_order = "Order Completed" where revenue >= 100 and currency = "EUR"
event pricing   = page "Pricing"
event any_page  = page
segment lapsed_loyalists "Loyal customers who stopped buying" =
      count(purchase in last 365 days) >= 3
  and none(purchase in last 90 days)
  and country in ("DE", "AT", "CH")
segment abandoned = seq(cart_add in last 30 days then not purchase within 1 day)
segment funnel = seq(signup then pricing within 7 days then purchase within 14 days)
segment x = days_since(last purchase) > 30 or not in segment abandoned
  and sum(("Order Completed" where revenue > 1).revenue between 2026-01-01 and 2026-02-01) > 10
"#;
        let (defs, errors) = parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(defs.len(), 8);
        let Definition::Segment(s) = &defs[4] else {
            panic!()
        };
        assert_eq!(s.name.text, "lapsed_loyalists");
        assert_eq!(
            s.title.as_deref(),
            Some("Loyal customers who stopped buying")
        );
        let Definition::Segment(s) = &defs[7] else {
            panic!()
        };
        // or binds weaker than and
        assert!(matches!(s.expr.kind, ExprKind::Binary(BinOp::Or, _, _)));
    }

    #[test]
    fn reports_every_broken_definition() {
        let text = "segment a = count(purchase) >\nsegment b = country = \"DE\"\nsegment c = sum(purchase) > 1\n";
        let (defs, errors) = parse(text);
        assert_eq!(defs.len(), 1, "{defs:?}");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].message.contains("expected a value"),
            "{}",
            errors[0].message
        );
        assert!(errors[1].message.contains("needs a property"));
    }

    #[test]
    fn durations_and_precedence() {
        let e = parse_expr("last_seen < now - 30 days and not a = 1 or b").unwrap();
        let ExprKind::Binary(BinOp::Or, l, _) = e.kind else {
            panic!()
        };
        let ExprKind::Binary(BinOp::And, cmp, not) = l.kind else {
            panic!()
        };
        assert!(matches!(not.kind, ExprKind::Not(_)));
        let ExprKind::Binary(BinOp::Lt, _, rhs) = cmp.kind else {
            panic!()
        };
        let ExprKind::Binary(BinOp::Sub, _, d) = rhs.kind else {
            panic!()
        };
        assert!(matches!(
            d.kind,
            ExprKind::Duration(Duration {
                n: 30,
                unit: Unit::Day
            })
        ));
    }
}
