//! Which derived tables a segment cannot do without. A person with no row in the event
//! aggregation `a` fails `count(purchase in last 365 days) >= 3` whatever else holds, so the
//! members query can start from that aggregation (and join the rest to it) instead of reading
//! every profile and left-joining the aggregation to each.
//!
//! The test evaluates the compiled condition in SQL's three-valued logic with the table's
//! columns all NULL (as a left join leaves them for such a person) and every other column
//! unknown: the table is required when the result is FALSE or NULL whatever the unknowns are.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, UnaryOperator, Value,
    visit_expressions,
};

/// Whether `cond` can only hold for a person with a row in the derived table `alias`.
pub fn required(cond: &Expr, alias: &str) -> bool {
    required_one_of(cond, &[alias])
}

/// Whether `cond` can only hold for a person with a row in at least one of the derived tables
/// `aliases`: `exists(a) or count(b) >= 3` needs neither table alone, but one of the two.
pub fn required_one_of(cond: &Expr, aliases: &[&str]) -> bool {
    matches!(eval(cond, aliases), V::Null | V::Bool(false) | V::NotTrue)
}

/// Whether `cond` reads a column of table `alias` (`alias.column`).
pub fn references(cond: &Expr, alias: &str) -> bool {
    visit_expressions(cond, |e| match e {
        Expr::CompoundIdentifier(parts) if parts.len() == 2 && parts[0].value == alias => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// A value under three-valued logic; `Unknown` is any value at all, NULL included, and
/// `NotTrue` is NULL or FALSE (`NULL AND x`).
#[derive(Debug, Clone, PartialEq)]
enum V {
    Null,
    Bool(bool),
    NotTrue,
    Num(f64),
    Text(String),
    Unknown,
}

fn eval(e: &Expr, alias: &[&str]) -> V {
    match e {
        Expr::Nested(inner) => eval(inner, alias),
        Expr::CompoundIdentifier(parts)
            if parts.len() == 2 && alias.contains(&parts[0].value.as_str()) =>
        {
            V::Null
        }
        Expr::Value(v) => match &v.value {
            Value::Null => V::Null,
            Value::Boolean(b) => V::Bool(*b),
            Value::Number(n, _) => n.parse().map_or(V::Unknown, V::Num),
            Value::SingleQuotedString(s) => V::Text(s.clone()),
            _ => V::Unknown,
        },
        Expr::IsNull(inner) => match eval(inner, alias) {
            V::Unknown | V::NotTrue => V::Unknown,
            v => V::Bool(v == V::Null),
        },
        Expr::IsNotNull(inner) => match eval(inner, alias) {
            V::Unknown | V::NotTrue => V::Unknown,
            v => V::Bool(v != V::Null),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => match eval(expr, alias) {
            V::Bool(b) => V::Bool(!b),
            V::Null => V::Null,
            _ => V::Unknown,
        },
        Expr::BinaryOp { left, op, right } => binary(op, eval(left, alias), eval(right, alias)),
        // `NULL IN (…)` and `NULL BETWEEN … AND …` are NULL whatever the list or bounds.
        Expr::InList { expr, list, .. } if !list.is_empty() => match eval(expr, alias) {
            V::Null => V::Null,
            _ => V::Unknown,
        },
        Expr::Between { expr, .. } => match eval(expr, alias) {
            V::Null => V::Null,
            _ => V::Unknown,
        },
        Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("coalesce") => {
            let FunctionArguments::List(list) = &f.args else {
                return V::Unknown;
            };
            for arg in &list.args {
                let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = arg else {
                    return V::Unknown;
                };
                match eval(x, alias) {
                    V::Null => continue,
                    V::NotTrue => return V::Unknown,
                    v => return v,
                }
            }
            V::Null
        }
        _ => V::Unknown,
    }
}

fn binary(op: &BinaryOperator, l: V, r: V) -> V {
    use BinaryOperator as B;
    match op {
        B::And => match (l, r) {
            (V::Bool(false), _) | (_, V::Bool(false)) => V::Bool(false),
            (V::Bool(true), V::Bool(true)) => V::Bool(true),
            (V::Null | V::Bool(true), V::Null | V::Bool(true)) => V::Null,
            (V::Null | V::NotTrue, _) | (_, V::Null | V::NotTrue) => V::NotTrue,
            _ => V::Unknown,
        },
        B::Or => match (l, r) {
            (V::Bool(true), _) | (_, V::Bool(true)) => V::Bool(true),
            (V::Bool(false), V::Bool(false)) => V::Bool(false),
            (V::Null | V::Bool(false), V::Null | V::Bool(false)) => V::Null,
            (V::Null | V::Bool(false) | V::NotTrue, V::Null | V::Bool(false) | V::NotTrue) => {
                V::NotTrue
            }
            _ => V::Unknown,
        },
        B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq => {
            let ord = match (&l, &r) {
                (V::Null, _) | (_, V::Null) => return V::Null,
                (V::Num(a), V::Num(b)) => a.partial_cmp(b),
                (V::Text(a), V::Text(b)) => Some(a.cmp(b)),
                (V::Bool(a), V::Bool(b)) => Some(a.cmp(b)),
                _ => None,
            };
            let Some(ord) = ord else {
                return V::Unknown;
            };
            V::Bool(match op {
                B::Eq => ord.is_eq(),
                B::NotEq => ord.is_ne(),
                B::Lt => ord.is_lt(),
                B::LtEq => ord.is_le(),
                B::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        _ => V::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::sqlast as sql;

    fn req(cond: &str) -> bool {
        required(&sql::expr(cond, &[]), "a")
    }

    #[test]
    fn a_table_is_required_when_its_absence_decides_the_condition() {
        assert!(req("coalesce(a.a0, 0) >= 5 AND coalesce(a.a1, 0) = 0"));
        assert!(req("coalesce(a.a0, 0) >= 500 OR coalesce(a.a1, 0) >= 3"));
        assert!(req("(coalesce(a.a0, 0) > 0) AND p.country IN ('DE')"));
        assert!(req("a.a0 > 10"), "NULL > 10 is NULL, not true");
        assert!(req("p.x = 1 AND NOT coalesce(a.a0, 0) = 0"));
        // Someone without events passes `none(...)`, an OR with a profile field, a negation.
        assert!(!req("coalesce(a.a1, 0) = 0"));
        assert!(!req("coalesce(a.a0, 0) >= 5 OR p.country = 'DE'"));
        assert!(!req("NOT (coalesce(a.a0, 0) >= 5)"));
        assert!(!req("a.a0 IS NULL"));
        assert!(!req("coalesce(a.a0, p.n) > 3"));
        assert!(!req("p.country IN ('DE')"));
        assert!(!req("t.clv > 200"));
        assert!(req("a.a0 IN (1, 2) AND p.x = 1"));
        assert!(req("a.a0 NOT IN (1, 2)"), "NULL NOT IN (…) is NULL");
        assert!(req("a.a0 BETWEEN 1 AND p.n"));
        assert!(!req("p.x IN (1, a.a0)"));
        // NULL AND anything is never true; NOT of that can be.
        assert!(req("a.a0 > 1 AND p.x = 1"));
        assert!(req("(a.a0 > 1 AND p.x = 1) OR coalesce(a.a1, 0) > 0"));
        assert!(!req("NOT (a.a0 > 1 AND p.x = 1)"));
        assert!(!req("(a.a0 > 1 AND p.x = 1) IS NULL"));
        assert!(!req("coalesce(a.a0 > 1 AND p.x = 1, true)"));
    }

    #[test]
    fn one_of_several_tables_can_be_required_when_none_is_alone() {
        let e = sql::expr("coalesce(a.a0, 0) > 0 OR coalesce(c0.n, 0) >= 3", &[]);
        assert!(!required(&e, "a"));
        assert!(!required(&e, "c0"));
        assert!(required_one_of(&e, &["a", "c0"]));
        let e = sql::expr("coalesce(a.a0, 0) > 0 OR coalesce(c0.n, 0) = 0", &[]);
        assert!(!required_one_of(&e, &["a", "c0"]), "no rows in c0 passes");
        let e = sql::expr("coalesce(a.a0, 0) > 0 OR t.clv > 100", &[]);
        assert!(!required_one_of(&e, &["a"]), "traits alone can pass");
    }

    #[test]
    fn references_finds_qualified_columns_only() {
        let e = sql::expr("p.country = 'p.x' AND coalesce(a.a0, 0) > 1", &[]);
        assert!(references(&e, "p"));
        assert!(references(&e, "a"));
        assert!(!references(&e, "t"));
    }
}
