//! Building blocks for the compiled SQL, as sqlparser syntax trees. Shapes come from fixed
//! templates written in this crate (`__0`, `__1`, … mark where sub-trees go); every value a user
//! wrote enters as a typed literal node, never as text, so nothing in a `.seg` file can change
//! a query's shape.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, ObjectName, Query, Select, SelectItem, SetExpr, Value, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// The SQL engines `segment compile --dialect` prints for. tribe itself runs `Generic`
/// (DataFusion's SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// DataFusion, as tribe runs it.
    Datafusion,
    Postgres,
    Duckdb,
    Bigquery,
    Snowflake,
    Mysql,
}

impl Dialect {
    fn parser(self) -> Box<dyn datafusion::sql::sqlparser::dialect::Dialect> {
        use datafusion::sql::sqlparser::dialect as sd;
        match self {
            Dialect::Datafusion => Box::new(GenericDialect {}),
            Dialect::Postgres => Box::new(sd::PostgreSqlDialect {}),
            Dialect::Duckdb => Box::new(sd::DuckDbDialect {}),
            Dialect::Bigquery => Box::new(sd::BigQueryDialect {}),
            Dialect::Snowflake => Box::new(sd::SnowflakeDialect {}),
            Dialect::Mysql => Box::new(sd::MySqlDialect {}),
        }
    }

    fn quote(self) -> char {
        match self {
            Dialect::Mysql | Dialect::Bigquery => '`',
            _ => '"',
        }
    }

    /// Whether the engine has `FULL JOIN` (MySQL has not).
    pub fn has_full_join(self) -> bool {
        self != Dialect::Mysql
    }

    /// Whether aggregates take `FILTER (WHERE …)`; the others get `CASE WHEN … END` arguments.
    pub fn has_filter(self) -> bool {
        matches!(
            self,
            Dialect::Datafusion | Dialect::Postgres | Dialect::Duckdb
        )
    }
}

/// Parses a template expression and puts `args[i]` where it says `__i`.
pub fn expr(template: &str, args: &[Expr]) -> Expr {
    expr_in(Dialect::Datafusion, template, args)
}

/// Like `expr`, for a template written in a dialect's own syntax.
pub fn expr_in(d: Dialect, template: &str, args: &[Expr]) -> Expr {
    let mut e = Parser::new(d.parser().as_ref())
        .try_with_sql(template)
        .and_then(|mut p| p.parse_expr())
        .unwrap_or_else(|err| panic!("bad SQL template {template:?}: {err}"));
    substitute(&mut e, args);
    e
}

/// Parses a template query and substitutes like `expr`.
pub fn query(template: &str, args: &[Expr]) -> Query {
    let mut q = *Parser::new(&GenericDialect {})
        .try_with_sql(template)
        .and_then(|mut p| p.parse_query())
        .unwrap_or_else(|err| panic!("bad SQL template {template:?}: {err}"));
    substitute(&mut q, args);
    q
}

fn substitute<T: datafusion::sql::sqlparser::ast::VisitMut>(node: &mut T, args: &[Expr]) {
    let _ = visit_expressions_mut(node, |e| {
        if let Expr::Identifier(id) = e
            && let Some(i) = id
                .value
                .strip_prefix("__")
                .and_then(|n| n.parse::<usize>().ok())
        {
            *e = args[i].clone();
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The select of a simple query, to add projections, joins or conditions to.
pub fn select_mut(q: &mut Query) -> &mut Select {
    match q.body.as_mut() {
        SetExpr::Select(s) => s,
        _ => panic!("template is not a plain select"),
    }
}

/// `expr AS alias`.
pub fn item(e: Expr, alias: &str, d: Dialect) -> SelectItem {
    SelectItem::ExprWithAlias {
        expr: e,
        alias: ident_of(alias, d),
    }
}

pub fn ident_of(name: &str, d: Dialect) -> Ident {
    Ident::with_quote(d.quote(), name)
}

/// A column, quoted so that names like `timestamp` or `type` are never read as keywords.
pub fn col(name: &str, d: Dialect) -> Expr {
    Expr::Identifier(ident_of(name, d))
}

/// `table.column`.
pub fn qcol(table: &str, name: &str, d: Dialect) -> Expr {
    Expr::CompoundIdentifier(vec![Ident::new(table), ident_of(name, d)])
}

/// A table or view by name.
pub fn table_name(name: &str, d: Dialect) -> ObjectName {
    ObjectName::from(vec![ident_of(name, d)])
}

pub fn string(s: &str, d: Dialect) -> Expr {
    let value = match d {
        // These read backslashes in string literals as escapes.
        Dialect::Mysql | Dialect::Bigquery => s.replace('\\', "\\\\"),
        _ => s.to_string(),
    };
    if d == Dialect::Bigquery && value.contains('\'') {
        // BigQuery does not take '' inside '…'; it takes \'.
        return Expr::value(Value::TripleSingleQuotedString(value));
    }
    Expr::value(Value::SingleQuotedString(value))
}

pub fn number(text: &str) -> Expr {
    Expr::value(Value::Number(text.to_string(), false))
}

pub fn boolean(b: bool) -> Expr {
    Expr::value(Value::Boolean(b))
}

pub fn null() -> Expr {
    Expr::value(Value::Null)
}

/// An instant as a literal of the dialect's UTC timestamp type.
pub fn timestamp(t: DateTime<Utc>, d: Dialect) -> Expr {
    let text = t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let lit = Expr::value(Value::SingleQuotedString(text.clone()));
    match d {
        Dialect::Datafusion => expr("CAST(__0 AS TIMESTAMP)", &[lit]),
        Dialect::Postgres | Dialect::Duckdb => expr(
            "CAST(__0 AS TIMESTAMPTZ)",
            &[Expr::value(Value::SingleQuotedString(format!("{text}+00")))],
        ),
        Dialect::Bigquery => expr(
            "TIMESTAMP(__0)",
            &[Expr::value(Value::SingleQuotedString(format!("{text}+00")))],
        ),
        Dialect::Snowflake => expr(
            "TO_TIMESTAMP_TZ(__0)",
            &[Expr::value(Value::SingleQuotedString(format!(
                "{text} +00:00"
            )))],
        ),
        Dialect::Mysql => expr("TIMESTAMP(__0)", &[lit]),
    }
}

/// A calendar day as a `DATE` literal (for partition pruning on `day`).
pub fn date(t: DateTime<Utc>) -> Expr {
    expr(
        "CAST(__0 AS DATE)",
        &[Expr::value(Value::SingleQuotedString(
            t.format("%Y-%m-%d").to_string(),
        ))],
    )
}

/// `a AND b AND …`, or `TRUE` for none.
pub fn and_all(parts: Vec<Expr>) -> Expr {
    parts
        .into_iter()
        .reduce(|a, b| expr("__0 AND __1", &[a, b]))
        .unwrap_or_else(|| boolean(true))
}

/// `(a) OR (b) OR …`, or `FALSE` for none.
pub fn or_all(parts: Vec<Expr>) -> Expr {
    parts
        .into_iter()
        .reduce(|a, b| expr("__0 OR __1", &[a, b]))
        .unwrap_or_else(|| boolean(false))
}

/// Wraps in parentheses, which sqlparser keeps when printing.
pub fn nested(e: Expr) -> Expr {
    Expr::Nested(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_subtrees_and_literals_stay_literals() {
        let d = Dialect::Datafusion;
        let e = expr(
            "__0 = __1 AND __2",
            &[col("country", d), string("x' OR 1=1 --", d), boolean(true)],
        );
        assert_eq!(e.to_string(), r#""country" = 'x'' OR 1=1 --' AND true"#);
        let m = string(r"a\b", Dialect::Mysql);
        assert_eq!(m.to_string(), r"'a\\b'");
        assert_eq!(
            col("timestamp", Dialect::Bigquery).to_string(),
            "`timestamp`"
        );
    }
}
