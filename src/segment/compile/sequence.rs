//! Sequences and references to other segments, each a derived table joined on the profile.

use super::*;

impl Compiler<'_> {
    /// A sequence as a query of the profiles that have a matching chain of events.
    pub(super) fn sequence(&mut self, steps: &[ast::Step]) -> Option<Query> {
        let d = self.d;
        let ts = sql::col("timestamp", d);
        let mut args: Vec<Expr> = vec![ts.clone(), sql::timestamp(self.now, d)];
        let mut from = String::new();
        let mut on_first_lower = None;
        let positives: Vec<&ast::Step> = steps.iter().filter(|s| !s.negated).collect();
        let negative = steps.iter().find(|s| s.negated);
        let mut conds = Vec::new();
        for (i, step) in positives.iter().enumerate() {
            let sel = self.selection(&step.selector, step.window.as_ref())?;
            if i == 0 {
                on_first_lower = sel.lower;
            }
            conds.push(sel);
        }
        for (i, sel) in conds.into_iter().enumerate() {
            // Later steps come after the first, so the first step's lower bound prunes them too.
            let lower = sel.lower.or(on_first_lower).max(on_first_lower);
            let filter = self.scan_filter(vec![sel.cond], lower, sel.upper, true, true);
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

    pub(super) fn segment_ref(&mut self, name: &ast::Name) -> Option<Query> {
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
            Ok(c) => {
                self.join_filters_prune |= c.join_filters_prune;
                Some(c.members())
            }
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
