//! The audience query of an export: the segment's members joined to their profile fields and
//! traits, with consent and suppression as conditions of the same query (so a profile without
//! consent never reaches a file), and the columns normalised and hashed in SQL.
//!
//! The SQL is assembled from fixed templates; the only names in it are column names that were
//! found in the tables' schemas, quoted with `sql::ident`, so no user text is pasted into it.

use arrow::datatypes::Schema;

use super::definition::{ColumnConfig, ExportConfig, Normalize};
use crate::segment::diag::closest;
use crate::sql::ident;

/// The name of the profile id column in audience results and state files; not written to the
/// export's files.
pub const PROFILE_ID: &str = "__profile_id";

/// An export's audience query and what it produces.
#[derive(Debug, Clone)]
pub struct Audience {
    /// Selects `__profile_id` and the output columns, ordered by profile id.
    pub sql: String,
    /// The output column names, in file order.
    pub columns: Vec<String>,
    /// Things the user should know (a preset input that does not exist, a consent channel
    /// nobody has stated).
    pub notes: Vec<String>,
}

/// One output column before it is turned into SQL.
struct Column {
    name: String,
    from: String,
    normalize: Option<Normalize>,
    hash: bool,
    /// An identifier of a platform preset: rows need at least one.
    identifier: bool,
    /// A preset input may be missing (then the column is empty); a listed column may not.
    optional: bool,
}

/// The preset's columns: (file column, default input field, normalisation, hashed, identifier).
fn preset_columns(preset: &str) -> Vec<(&'static str, &'static str, Normalize, bool, bool)> {
    use Normalize::*;
    match preset {
        "google_customer_match" => vec![
            ("Email", "email", GoogleEmail, true, true),
            ("Phone", "phone", Phone, true, true),
            ("First Name", "first_name", Lower, true, false),
            ("Last Name", "last_name", Lower, true, false),
            ("Country", "country", Upper, false, false),
            ("Zip", "zip", Trim, false, false),
        ],
        "meta_custom_audience" => vec![
            ("email", "email", MetaEmail, true, true),
            ("phone", "phone", Digits, true, true),
            ("fn", "first_name", Letters, true, false),
            ("ln", "last_name", Letters, true, false),
            ("country", "country", MetaCountry, true, false),
            ("zip", "zip", MetaZip, true, false),
        ],
        _ => Vec::new(),
    }
}

fn columns_of(def: &ExportConfig) -> Vec<Column> {
    if let Some(preset) = &def.preset {
        return preset_columns(preset)
            .into_iter()
            .map(|(name, input, normalize, hash, identifier)| Column {
                name: name.into(),
                from: def
                    .fields
                    .get(input)
                    .cloned()
                    .unwrap_or_else(|| input.into()),
                normalize: Some(normalize),
                hash,
                identifier,
                optional: true,
            })
            .collect();
    }
    def.columns
        .iter()
        .map(|c| {
            let (normalize, hash) = match c {
                ColumnConfig::Field(_) => (None, false),
                ColumnConfig::Spec(s) => (s.normalize, s.hash.is_some()),
            };
            Column {
                name: c.output_name().to_string(),
                from: c.source().to_string(),
                normalize,
                hash,
                identifier: false,
                optional: false,
            }
        })
        .collect()
}

/// The SQL of a normalisation of text `x`; empty results become null (the hash of an empty
/// string would match nobody and look like data).
fn normalized(x: &str, n: Normalize) -> String {
    let e = format!("lower(trim({x}))");
    let body = match n {
        Normalize::Trim => format!("trim({x})"),
        Normalize::Lower | Normalize::Email => e,
        Normalize::Upper => format!("upper(trim({x}))"),
        Normalize::Phone => format!("regexp_replace({x}, '[^0-9+]', '', 'g')"),
        Normalize::Digits => format!("regexp_replace({x}, '[^0-9]', '', 'g')"),
        Normalize::Letters => format!("regexp_replace({e}, '[^a-z]', '', 'g')"),
        Normalize::GoogleEmail => format!(
            "CASE WHEN split_part({e}, '@', 2) IN ('gmail.com', 'googlemail.com') \
             THEN replace(split_part({e}, '@', 1), '.', '') || '@' || split_part({e}, '@', 2) \
             ELSE {e} END"
        ),
        Normalize::MetaEmail => format!("regexp_replace(lower({x}), '^[\\s.]+|[\\s.]+$', '', 'g')"),
        Normalize::MetaCountry => format!("left(regexp_replace({e}, '[^a-z]', '', 'g'), 2)"),
        Normalize::MetaZip => format!("split_part(replace({e}, ' ', ''), '-', 1)"),
    };
    format!("nullif({body}, '')")
}

/// Builds the audience query of `def` over the members query of its segment (and of its
/// suppression segment), given the schemas of `profiles` and `traits`.
pub fn plan(
    def: &ExportConfig,
    members_sql: &str,
    suppress_sql: Option<&str>,
    profiles: &Schema,
    traits: Option<&Schema>,
) -> Result<Audience, String> {
    let mut notes = Vec::new();
    let mut select = vec![format!("p.profile_id AS {}", ident(PROFILE_ID))];
    let mut names = Vec::new();
    let mut identifiers = Vec::new();
    let mut uses_traits = false;
    for c in columns_of(def) {
        let source = if profiles.field_with_name(&c.from).is_ok() {
            Some(format!("p.{}", ident(&c.from)))
        } else if traits.is_some_and(|t| t.field_with_name(&c.from).is_ok()) {
            uses_traits = true;
            Some(format!("t.{}", ident(&c.from)))
        } else {
            None
        };
        let expr = match source {
            Some(src) if c.normalize.is_some() || c.hash => {
                let text = format!("CAST({src} AS VARCHAR)");
                let v = match c.normalize {
                    Some(n) => normalized(&text, n),
                    None => format!("nullif({text}, '')"),
                };
                if c.hash {
                    format!("encode(sha256({v}), 'hex')")
                } else {
                    v
                }
            }
            Some(src) => src,
            None if c.optional => {
                notes.push(format!(
                    "column {:?}: no profile field or trait {:?}, so it is empty (map another with fields.{} = \"...\")",
                    c.name, c.from, c.from
                ));
                "CAST(NULL AS VARCHAR)".to_string()
            }
            None => {
                let mut known: Vec<&str> = profiles
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                if let Some(t) = traits {
                    known.extend(t.fields().iter().map(|f| f.name().as_str()));
                }
                let hint = closest(&c.from, known.iter().copied())
                    .map(|k| format!(" (did you mean {k:?}?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "column {:?}: no profile field or trait of that name{hint}",
                    c.from
                ));
            }
        };
        if c.identifier {
            identifiers.push(expr.clone());
        }
        if names.contains(&c.name) || c.name == PROFILE_ID {
            return Err(format!("column {:?} appears twice", c.name));
        }
        select.push(format!("{expr} AS {}", ident(&c.name)));
        names.push(c.name);
    }
    let mut conditions = Vec::new();
    if let Some(channel) = &def.consent {
        let column = format!("consent_{channel}");
        if profiles.field_with_name(&column).is_ok() {
            conditions.push(format!("p.{} IS TRUE", ident(&column)));
        } else {
            notes.push(format!(
                "no profile has stated consent for {channel:?}, so nobody is exported"
            ));
            conditions.push("FALSE".into());
        }
    }
    if let Some(s) = suppress_sql {
        conditions.push(format!(
            "p.profile_id NOT IN (SELECT profile_id FROM ({s}) AS suppressed)"
        ));
    }
    if !identifiers.is_empty() {
        let any: Vec<String> = identifiers
            .iter()
            .map(|e| format!("({e}) IS NOT NULL"))
            .collect();
        conditions.push(format!("({})", any.join(" OR ")));
    }
    let traits_join = if uses_traits {
        " LEFT JOIN traits AS t ON t.profile_id = p.profile_id"
    } else {
        ""
    };
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {} FROM ({members_sql}) AS m JOIN profiles AS p ON p.profile_id = m.profile_id{traits_join}{filter} ORDER BY 1",
        select.join(", ")
    );
    Ok(Audience {
        sql,
        columns: names,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};

    fn profiles() -> Schema {
        Schema::new(
            ["profile_id", "email", "phone", "first_name", "consent_ads"]
                .iter()
                .map(|n| Field::new(*n, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn unknown_columns_get_a_suggestion() {
        let mut def = ExportConfig::new("s");
        def.columns = vec![ColumnConfig::Field("emial".into())];
        let err = plan(&def, "SELECT 1", None, &profiles(), None).unwrap_err();
        assert!(err.contains("did you mean \"email\""), "{err}");
    }

    #[test]
    fn presets_note_missing_inputs_and_require_an_identifier() {
        let mut def = ExportConfig::new("s");
        def.preset = Some("google_customer_match".into());
        def.consent = Some("ads".into());
        let a = plan(&def, "SELECT 1", None, &profiles(), None).unwrap();
        assert_eq!(
            a.columns,
            [
                "Email",
                "Phone",
                "First Name",
                "Last Name",
                "Country",
                "Zip"
            ]
        );
        assert!(a.notes.iter().any(|n| n.contains("\"last_name\"")));
        assert!(a.sql.contains("p.\"consent_ads\" IS TRUE"));
        assert!(a.sql.contains("IS NOT NULL OR"));
        def.consent = Some("sms".into());
        let a = plan(&def, "SELECT 1", None, &profiles(), None).unwrap();
        assert!(a.notes.iter().any(|n| n.contains("nobody is exported")));
    }
}
