//! Making raw identifiers comparable: one normaliser per identifier type (e-mail, E.164 phone,
//! trim, ...) and the blocked values that are never linked. A value either normalises or is
//! skipped with a reason; skipped values never join anything.

use std::collections::BTreeMap;

use phonenumber::Mode;
use regex::Regex;

use crate::config::{IdentitySection, Normaliser};
use crate::error::{Error, Result};

/// Why a raw identifier was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    Empty,
    Blocked,
    InvalidEmail,
    InvalidPhone,
}

impl Skip {
    pub fn describe(self) -> &'static str {
        match self {
            Skip::Empty => "empty value",
            Skip::Blocked => "blocked value",
            Skip::InvalidEmail => "not an e-mail address",
            Skip::InvalidPhone => "not a phone number",
        }
    }
}

/// Junk that real data is full of, blocked for every type unless `default_blocks = false`.
const DEFAULT_BLOCKED_ANY: &str =
    r"(?i)^(null|nil|none|undefined|unknown|n/?a|-+|0+|test|anonymous|\[object object\])$";
const DEFAULT_BLOCKED: &[(&str, &str)] = &[
    (
        "email",
        r"^(test@test\.com|test@example\.com|email@example\.com|noreply@.*|no-reply@.*|donotreply@.*|a@a\.[a-z]+)$",
    ),
    // A country code followed only by zeros.
    ("phone", r"^\+\d{1,3}0{5,}$"),
];

/// The normalisers and blocked values of a workspace.
pub struct Normalisers {
    default_blocks: bool,
    country: Option<phonenumber::country::Id>,
    by_type: BTreeMap<String, Normaliser>,
    blocked: Vec<(Option<String>, Regex)>,
}

impl Normalisers {
    pub fn new(config: &IdentitySection) -> Result<Normalisers> {
        let country = match &config.default_country {
            Some(c) => Some(c.parse().map_err(|_| {
                Error::Other(format!("[identity] default_country: unknown country {c:?}"))
            })?),
            None => None,
        };
        let mut blocked = Vec::new();
        let compile = |p: &str| {
            Regex::new(p).map_err(|e| Error::Other(format!("[identity.blocked] {p:?}: {e}")))
        };
        if config.default_blocks {
            blocked.push((None, compile(DEFAULT_BLOCKED_ANY)?));
            for (ty, p) in DEFAULT_BLOCKED {
                blocked.push((Some(ty.to_string()), compile(p)?));
            }
        }
        for (ty, patterns) in &config.blocked {
            let ty = (ty != "*").then(|| ty.clone());
            for p in patterns {
                blocked.push((ty.clone(), compile(p)?));
            }
        }
        Ok(Normalisers {
            default_blocks: config.default_blocks,
            country,
            by_type: config.normalise.clone(),
            blocked,
        })
    }

    /// The normaliser used for an identifier type.
    pub fn normaliser(&self, ty: &str) -> Normaliser {
        self.by_type.get(ty).copied().unwrap_or(match ty {
            "email" => Normaliser::Email,
            "phone" => Normaliser::Phone,
            _ => Normaliser::Trim,
        })
    }

    /// The comparable form of `raw` as an identifier of type `ty`, or why it is not usable.
    pub fn normalise(&self, ty: &str, raw: &str) -> Result<String, Skip> {
        let value = match self.normaliser(ty) {
            Normaliser::Email => email(raw)?,
            Normaliser::Phone => self.phone(raw)?,
            Normaliser::Trim => raw.trim().to_string(),
            Normaliser::Lower => raw.trim().to_lowercase(),
            Normaliser::Upper => raw.trim().to_uppercase(),
            Normaliser::Digits => raw.chars().filter(char::is_ascii_digit).collect(),
            Normaliser::None => raw.to_string(),
        };
        if value.is_empty() {
            return Err(Skip::Empty);
        }
        let blocked = self
            .blocked
            .iter()
            .any(|(t, re)| t.as_deref().is_none_or(|t| t == ty) && re.is_match(&value));
        // One digit repeated (+1111111111) is a placeholder, not a phone; the regex crate has
        // no backreferences to say so in a pattern.
        let placeholder = self.default_blocks && ty == "phone" && {
            let mut digits = value.chars().filter(char::is_ascii_digit);
            let first = digits.next();
            digits.all(|d| Some(d) == first)
        };
        if blocked || placeholder {
            return Err(Skip::Blocked);
        }
        Ok(value)
    }

    fn phone(&self, raw: &str) -> Result<String, Skip> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(Skip::Empty);
        }
        // `00` is the international prefix in most of the world; libphonenumber only reads it
        // when it knows the caller's country.
        let text = match trimmed.strip_prefix("00") {
            Some(rest) if self.country.is_none() => format!("+{rest}"),
            _ => trimmed.to_string(),
        };
        if !text
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().\u{a0}/".contains(c))
        {
            return Err(Skip::InvalidPhone);
        }
        let digits = text.chars().filter(char::is_ascii_digit).count();
        if !(6..=17).contains(&digits) {
            return Err(Skip::InvalidPhone);
        }
        let number = phonenumber::parse(self.country, &text).map_err(|_| Skip::InvalidPhone)?;
        Ok(number.format().mode(Mode::E164).to_string())
    }
}

fn email(raw: &str) -> Result<String, Skip> {
    let value = raw.trim().to_lowercase();
    if value.is_empty() {
        return Err(Skip::Empty);
    }
    let valid = match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.contains(char::is_whitespace)
                && !domain.contains('@')
        }
        None => false,
    };
    if valid {
        Ok(value)
    } else {
        Err(Skip::InvalidEmail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalisers(country: Option<&str>) -> Normalisers {
        let config = IdentitySection {
            default_country: country.map(String::from),
            ..IdentitySection::default()
        };
        Normalisers::new(&config).unwrap()
    }

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        let n = normalisers(None);
        assert_eq!(
            n.normalise("email", " Ana@Example.COM ").unwrap(),
            "ana@example.com"
        );
        assert_eq!(
            n.normalise("email", "ana.example.com"),
            Err(Skip::InvalidEmail)
        );
        assert_eq!(
            n.normalise("email", "ana@localhost"),
            Err(Skip::InvalidEmail)
        );
        assert_eq!(n.normalise("email", "TEST@test.com"), Err(Skip::Blocked));
        assert_eq!(n.normalise("email", "  "), Err(Skip::Empty));
    }

    #[test]
    fn phones_become_e164() {
        let de = normalisers(Some("DE"));
        for raw in [
            "0151 23456789",
            "+49 (151) 234 56789",
            "0049151234567 89",
            "+4915123456789",
        ] {
            assert_eq!(
                de.normalise("phone", raw).unwrap(),
                "+4915123456789",
                "{raw}"
            );
        }
        let none = normalisers(None);
        assert_eq!(
            none.normalise("phone", "004915123456789").unwrap(),
            "+4915123456789"
        );
        assert_eq!(
            none.normalise("phone", "0151 23456789"),
            Err(Skip::InvalidPhone)
        );
        assert!(de.normalise("phone", "+49 000000000").is_err());
        assert_eq!(de.normalise("phone", "call me"), Err(Skip::InvalidPhone));
        assert_eq!(
            none.normalise("phone", "+1 111 111 1111"),
            Err(Skip::Blocked)
        );
    }

    #[test]
    fn junk_is_blocked_for_every_type() {
        let n = normalisers(None);
        for junk in ["null", "undefined", "N/A", "0000"] {
            assert_eq!(n.normalise("user_id", junk), Err(Skip::Blocked), "{junk}");
        }
        assert_eq!(n.normalise("user_id", " u-1 ").unwrap(), "u-1");
    }

    #[test]
    fn configured_blocks_and_normalisers_apply() {
        let mut config = IdentitySection::default();
        config
            .blocked
            .insert("loyalty_id".into(), vec!["^L0+$".into()]);
        config
            .normalise
            .insert("loyalty_id".into(), Normaliser::Upper);
        let n = Normalisers::new(&config).unwrap();
        assert_eq!(n.normalise("loyalty_id", " l123 ").unwrap(), "L123");
        assert_eq!(n.normalise("loyalty_id", "l0000"), Err(Skip::Blocked));
    }
}
