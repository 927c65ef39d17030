//! The SQL that differs between engines: interval arithmetic, epochs, text functions,
//! filtered aggregates.

use super::*;

impl Compiler<'_> {
    pub(super) fn add_interval(&self, x: Expr, n: i64, unit: Unit) -> Expr {
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

    pub(super) fn round6(&self, x: Expr) -> Expr {
        let t = if self.d == Dialect::Postgres {
            "round(CAST(__0 AS NUMERIC), 6)"
        } else {
            "round(__0, 6)"
        };
        sql::expr(t, &[x])
    }

    pub(super) fn epoch(&self, x: Expr) -> Expr {
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
    pub(super) fn days_since(&self, x: Expr) -> Expr {
        let now = self.now.timestamp_micros() as f64 / 1e6;
        let epoch = self.epoch(x);
        sql::expr(
            "floor((__0 - __1) / 86400)",
            &[sql::number(&format!("{now:.6}")), epoch],
        )
    }

    pub(super) fn string_op(&mut self, op: StrOp, x: Expr, p: Expr) -> Option<Expr> {
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

    /// `f(x) FILTER (WHERE cond)`, or `f(CASE WHEN cond THEN x END)` where FILTER is missing.
    pub(super) fn filtered(&self, f: &str, x: Expr, cond: Expr) -> Expr {
        if self.d.has_filter() {
            sql::expr(&format!("{f}(__0) FILTER (WHERE __1)"), &[x, cond])
        } else {
            sql::expr(&format!("{f}(CASE WHEN __1 THEN __0 END)"), &[x, cond])
        }
    }
}
