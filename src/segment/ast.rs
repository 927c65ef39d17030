//! The syntax tree of `.seg` files, as the parser builds it: every node keeps its source span so
//! that the binder and `why` can point back at what the user wrote.

use chrono::{DateTime, Utc};

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// A name as written, with where.
#[derive(Debug, Clone, PartialEq)]
pub struct Name {
    pub text: String,
    pub span: Span,
}

/// One `event` or `segment` definition.
#[derive(Debug, Clone)]
pub enum Definition {
    Event(EventDef),
    Segment(SegmentDef),
}

#[derive(Debug, Clone)]
pub struct EventDef {
    pub name: Name,
    pub selector: Selector,
}

#[derive(Debug, Clone)]
pub struct SegmentDef {
    pub name: Name,
    pub title: Option<String>,
    pub expr: Expr,
    /// The whole definition, for listing and `why`.
    pub span: Span,
}

/// Which events: a base (named event, event name, or message type) and an optional filter.
#[derive(Debug, Clone)]
pub struct Selector {
    pub base: SelectorBase,
    pub filter: Option<Box<Expr>>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum SelectorBase {
    /// A named event selector defined with `event NAME = …`.
    Named(Name),
    /// A quoted event name: track events (and record events) with that `event`.
    EventName(String, Span),
    /// A message type (`page`, `screen`, `track`, `identify`, `group`, `alias`), optionally with a
    /// page/screen or event name.
    Type {
        kind: String,
        name: Option<(String, Span)>,
    },
}

/// Time units of windows, durations and `within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub fn parse(word: &str) -> Option<Unit> {
        Some(match word.to_ascii_lowercase().as_str() {
            "minute" | "minutes" => Unit::Minute,
            "hour" | "hours" => Unit::Hour,
            "day" | "days" => Unit::Day,
            "week" | "weeks" => Unit::Week,
            "month" | "months" => Unit::Month,
            "year" | "years" => Unit::Year,
            _ => return None,
        })
    }
}

/// A length of time: `30 days`, `1 month`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Duration {
    pub n: i64,
    pub unit: Unit,
}

/// Where events must lie, relative to the as-of time or between fixed dates.
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    Last(Duration),
    Next(Duration),
    Since(DateTime<Utc>),
    Before(DateTime<Utc>),
    Between(DateTime<Utc>, DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Int(i64),
    /// Kept as written so that no precision is lost on the way to SQL.
    Decimal(String),
    Str(String),
    Bool(bool),
    Null,
    Time(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Add,
    Sub,
    Mul,
    Div,
    And,
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrOp {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    CountDistinct,
    First,
    Last,
    Exists,
    None,
}

impl AggKind {
    pub fn parse(word: &str) -> Option<AggKind> {
        Some(match word.to_ascii_lowercase().as_str() {
            "count" => AggKind::Count,
            "sum" => AggKind::Sum,
            "avg" => AggKind::Avg,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "count_distinct" => AggKind::CountDistinct,
            "first" => AggKind::First,
            "last" => AggKind::Last,
            "exists" => AggKind::Exists,
            "none" => AggKind::None,
            _ => return None,
        })
    }

    /// Whether the aggregate reads a property (`sum(SEL.prop)`) rather than counting events.
    pub fn takes_property(self) -> bool {
        !matches!(self, AggKind::Count | AggKind::Exists | AggKind::None)
    }
}

/// An event aggregate: `count(purchase in last 90 days)`, `sum(purchase.revenue)`.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub kind: AggKind,
    pub selector: Selector,
    pub property: Option<Vec<Name>>,
    pub window: Option<Window>,
}

/// One step of a sequence.
#[derive(Debug, Clone)]
pub struct Step {
    pub selector: Selector,
    pub window: Option<Window>,
    /// `then not …`: no such event may follow.
    pub negated: bool,
    /// `within D` of the previous step's match.
    pub within: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum ExprKind {
    Literal(Literal),
    Now,
    Duration(Duration),
    /// A field path: `country`, `address.city`, `consent.email`, `properties.timestamp`.
    Field(Vec<Name>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Str(StrOp, Box<Expr>, Box<Expr>),
    Matches(Box<Expr>, String),
    Call(Name, Vec<Expr>),
    Aggregate(Box<Aggregate>),
    /// `days_since(first SEL)` / `days_since(last SEL)`.
    DaysSinceEvent {
        first: bool,
        selector: Selector,
        window: Option<Window>,
    },
    Seq(Vec<Step>),
    InSegment(Name),
}
