//! Tokens of `.seg` files. Keywords are not tokens of their own: they are words, compared
//! case-insensitively by the parser, so that a name like `last_order` never collides with one.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::segment::ast::Span;
use crate::segment::diag::Diagnostic;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Word(String),
    Str(String),
    Int(i64),
    Decimal(String),
    Time(DateTime<Utc>),
    /// Punctuation and operators: `( ) , . = != < <= > >= + - * /`.
    Sym(&'static str),
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

const SYMBOLS: &[&str] = &[
    "!=", "<>", "<=", ">=", "(", ")", ",", ".", "=", "<", ">", "+", "-", "*", "/",
];

/// Splits `text` into tokens; errors are collected and lexing goes on after them.
pub fn lex(text: &str) -> (Vec<Token>, Vec<Diagnostic>) {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut errors = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if c == b'"' {
            let start = i;
            i += 1;
            let mut value = String::new();
            let mut closed = false;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < bytes.len() && matches!(bytes[i + 1], b'"' | b'\\') => {
                        value.push(bytes[i + 1] as char);
                        i += 2;
                    }
                    b'\n' => break,
                    _ => {
                        let ch = text[i..].chars().next().unwrap_or('?');
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            if !closed {
                errors.push(
                    Diagnostic::new(Span::new(start, i), "unterminated string")
                        .help("strings end with `\"` on the same line; write `\\\"` for a quote"),
                );
            }
            tokens.push(Token {
                tok: Tok::Str(value),
                span: Span::new(start, i),
            });
        } else if c.is_ascii_digit() {
            let start = i;
            let (tok, end) = number_or_time(text, i);
            i = end;
            match tok {
                Ok(tok) => tokens.push(Token {
                    tok,
                    span: Span::new(start, i),
                }),
                Err(msg) => errors.push(Diagnostic::new(Span::new(start, i), msg)),
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push(Token {
                tok: Tok::Word(text[start..i].to_string()),
                span: Span::new(start, i),
            });
        } else if let Some(sym) = SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) {
            let sym = if *sym == "<>" { "!=" } else { sym };
            let len = if sym == "!=" { 2 } else { sym.len() };
            tokens.push(Token {
                tok: Tok::Sym(sym),
                span: Span::new(i, i + len),
            });
            i += len;
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            errors.push(Diagnostic::new(
                Span::new(i, i + ch.len_utf8()),
                format!("unexpected character `{ch}`"),
            ));
            i += ch.len_utf8();
        }
    }
    tokens.push(Token {
        tok: Tok::Eof,
        span: Span::new(text.len(), text.len()),
    });
    (tokens, errors)
}

/// A number, a date (`2026-01-31`) or a timestamp (`2026-01-31T10:00:00Z`) starting at `i`.
fn number_or_time(text: &str, i: usize) -> (Result<Tok, String>, usize) {
    let rest = &text[i..];
    let is_date = rest.len() >= 10
        && rest.as_bytes()[..10].iter().enumerate().all(|(k, b)| {
            if k == 4 || k == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if is_date {
        let bytes = rest.as_bytes();
        if bytes.get(10) == Some(&b'T') {
            let mut end = 11;
            while end < bytes.len()
                && (bytes[end].is_ascii_digit() || matches!(bytes[end], b':' | b'.'))
            {
                end += 1;
            }
            if bytes.get(end) == Some(&b'Z') {
                end += 1;
            }
            let written = &rest[..end];
            let parsed = DateTime::parse_from_rfc3339(written)
                .map(|t| t.with_timezone(&Utc))
                .or_else(|_| {
                    NaiveDateTime::parse_from_str(written, "%Y-%m-%dT%H:%M:%S%.f")
                        .map(|t| t.and_utc())
                })
                .map(Tok::Time)
                .map_err(|_| {
                    format!("`{written}` is not a valid timestamp (expected 2026-01-31T10:00:00Z)")
                });
            return (parsed, i + end);
        }
        let written = &rest[..10];
        let parsed = NaiveDate::parse_from_str(written, "%Y-%m-%d")
            .map(|d| Tok::Time(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()))
            .map_err(|_| format!("`{written}` is not a valid date"));
        return (parsed, i + 10);
    }
    let bytes = rest.as_bytes();
    let mut end = 0;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    let decimal =
        bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit);
    if decimal {
        end += 1;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
        return (Ok(Tok::Decimal(rest[..end].to_string())), i + end);
    }
    let written = &rest[..end];
    let parsed = written
        .parse::<i64>()
        .map(Tok::Int)
        .map_err(|_| format!("`{written}` is too large for an integer"));
    (parsed, i + end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        let (t, e) = lex(text);
        assert!(e.is_empty(), "{e:?}");
        t.into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn words_numbers_strings_times() {
        assert_eq!(
            toks(r#"count(x) >= 3.5 and y != "a \"b\" \\" # comment"#),
            vec![
                Tok::Word("count".into()),
                Tok::Sym("("),
                Tok::Word("x".into()),
                Tok::Sym(")"),
                Tok::Sym(">="),
                Tok::Decimal("3.5".into()),
                Tok::Word("and".into()),
                Tok::Word("y".into()),
                Tok::Sym("!="),
                Tok::Str(r#"a "b" \"#.into()),
                Tok::Eof,
            ]
        );
        let t = toks("2026-01-31 2026-01-31T10:00:00Z 12");
        assert_eq!(t[0], Tok::Time("2026-01-31T00:00:00Z".parse().unwrap()));
        assert_eq!(t[1], Tok::Time("2026-01-31T10:00:00Z".parse().unwrap()));
        assert_eq!(t[2], Tok::Int(12));
    }

    #[test]
    fn errors_point_at_the_problem() {
        let (_, e) = lex("x = \"open\n y = 2026-02-30 ; z");
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].message.contains("unterminated"));
        assert!(e[1].message.contains("not a valid date"));
        assert_eq!(e[2].span, Span::new(26, 27));
    }
}
