//! Compile errors of `.seg` files and how they are shown: like rustc, with the file, line and
//! column, the source line with the offending part underlined, what was expected, and a
//! suggestion when a name is close to a known one. Rendering uses `ariadne`.

use std::fmt::Write;

use crate::segment::ast::Span;

/// One problem in a source file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
    /// A note under the source line: what was expected, or "did you mean".
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
}

/// A source file's text and name, for rendering.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub text: String,
}

impl Source {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

/// Renders diagnostics of one file, in order, as text (with colours when `color`).
pub fn render(source: &Source, diagnostics: &[Diagnostic], color: bool) -> String {
    use ariadne::{Config, Label, Report, ReportKind};
    let mut out = String::new();
    for d in diagnostics {
        let (line, col) = source.line_col(d.span.start);
        // ariadne counts characters; spans are bytes.
        let to_chars = |b: usize| source.text[..b.min(source.text.len())].chars().count();
        let start = to_chars(d.span.start);
        let end = to_chars(d.span.end).max(start + 1);
        let id = source.path.as_str();
        let mut report = Report::build(ReportKind::Error, (id, start..end))
            .with_config(Config::default().with_color(color).with_compact(false))
            .with_message(format!("{} ({}:{line}:{col})", d.message, source.path))
            .with_label(Label::new((id, start..end)).with_message(&d.message));
        if let Some(help) = &d.help {
            report = report.with_help(help);
        }
        let mut buf = Vec::new();
        let cache = (id, ariadne::Source::from(source.text.as_str()));
        if report.finish().write(cache, &mut buf).is_ok() {
            out.push_str(&String::from_utf8_lossy(&buf));
        } else {
            let _ = writeln!(out, "error: {} ({}:{line}:{col})", d.message, source.path);
        }
    }
    out
}

/// The known name closest to `name`, when it is close enough to be a likely typo.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name_l = name.to_lowercase();
    known
        .into_iter()
        .map(|k| (edit_distance(&name_l, &k.to_lowercase()), k))
        .filter(|(d, k)| *d <= k.chars().count().max(name.chars().count()).div_ceil(3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let known = ["country", "email", "first_seen"];
        assert_eq!(closest("contry", known), Some("country"));
        assert_eq!(closest("emial", known), Some("email"));
        assert_eq!(closest("zzz", known), None);
    }

    #[test]
    fn positions_are_one_based() {
        let s = Source {
            path: "a.seg".into(),
            text: "ab\ncd é x".into(),
        };
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(4), (2, 2));
        assert_eq!(s.line_col("ab\ncd é ".len()), (2, 6));
    }
}
