//! Measuring resolution against a ground truth (`id_type,id_value,person_id`, identifiers as
//! they appear in the raw data): pairwise precision and recall over the truth's identifiers,
//! and the profiles that mix people (over-merged) or people split over profiles
//! (under-merged).

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::identity::normalize::Normalisers;
use crate::identity::{query_table, tables};
use crate::workspace::Workspace;

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Distinct identifiers in the truth (after normalisation).
    pub identifiers: u64,
    /// Of those, how many tribe has in a profile.
    pub found: u64,
    /// Truth rows whose value does not normalise (skipped, as resolution skips them).
    pub unusable: u64,
    pub persons: u64,
    pub profiles: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub true_pairs: u64,
    pub predicted_pairs: u64,
    pub correct_pairs: u64,
    /// Profiles holding identifiers of more than one person.
    pub over_merged_profiles: u64,
    /// People whose identifiers are spread over more than one profile.
    pub under_merged_persons: u64,
}

/// Reads a truth file and scores the workspace's current `identities` against it.
pub async fn evaluate(ws: &Workspace, truth: &Path) -> Result<Evaluation> {
    let normalisers = Normalisers::new(&ws.config.identity)?;
    let mut reader = csv::Reader::from_path(truth)
        .map_err(|e| Error::Input(format!("{}: {e}", truth.display())))?;
    let headers = reader
        .headers()
        .map_err(|e| Error::Input(format!("{}: {e}", truth.display())))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            Error::Input(format!(
                "{}: no column {name:?} (expected id_type,id_value,person_id)",
                truth.display()
            ))
        })
    };
    let (ct, cv, cp) = (col("id_type")?, col("id_value")?, col("person_id")?);
    let mut person_of: HashMap<(String, String), String> = HashMap::new();
    let mut unusable = 0u64;
    for (line, record) in reader.records().enumerate() {
        let record =
            record.map_err(|e| Error::Input(format!("{}:{}: {e}", truth.display(), line + 2)))?;
        let (ty, raw, person) = (&record[ct], &record[cv], &record[cp]);
        match normalisers.normalise(ty, raw) {
            Ok(v) => {
                person_of
                    .entry((ty.to_string(), v))
                    .or_insert_with(|| person.to_string());
            }
            Err(_) => unusable += 1,
        }
    }
    let rows = query_table(
        ws,
        &tables::identities(),
        "select id_type, id_value, profile_id from t",
    )
    .await?;
    let profile_of: HashMap<(String, String), String> = rows
        .into_iter()
        .map(|r| ((r[0].clone(), r[1].clone()), r[2].clone()))
        .collect();
    Ok(score(&person_of, &profile_of, unusable))
}

/// Pairwise scores from the person and the profile of each identifier; identifiers without a
/// profile count as profiles of their own.
pub fn score(
    person_of: &HashMap<(String, String), String>,
    profile_of: &HashMap<(String, String), String>,
    unusable: u64,
) -> Evaluation {
    let mut cells: HashMap<(&str, &str), u64> = HashMap::new();
    let mut per_profile: HashMap<&str, u64> = HashMap::new();
    let mut per_person: HashMap<&str, u64> = HashMap::new();
    let mut found = 0;
    let lonely: Vec<String> = person_of
        .keys()
        .map(|(t, v)| format!("unresolved:{t}:{v}"))
        .collect();
    for ((key, person), lonely) in person_of.iter().zip(&lonely) {
        let profile = match profile_of.get(key) {
            Some(p) => {
                found += 1;
                p.as_str()
            }
            None => lonely.as_str(),
        };
        *cells.entry((profile, person)).or_default() += 1;
        *per_profile.entry(profile).or_default() += 1;
        *per_person.entry(person).or_default() += 1;
    }
    let pairs = |n: u64| n * n.saturating_sub(1) / 2;
    let correct: u64 = cells.values().map(|&n| pairs(n)).sum();
    let predicted: u64 = per_profile.values().map(|&n| pairs(n)).sum();
    let truth: u64 = per_person.values().map(|&n| pairs(n)).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let (precision, recall) = (ratio(correct, predicted), ratio(correct, truth));
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    let mut persons_in_profile: HashMap<&str, u64> = HashMap::new();
    let mut profiles_of_person: HashMap<&str, u64> = HashMap::new();
    for (profile, person) in cells.keys() {
        *persons_in_profile.entry(profile).or_default() += 1;
        *profiles_of_person.entry(person).or_default() += 1;
    }
    Evaluation {
        identifiers: person_of.len() as u64,
        found,
        unusable,
        persons: per_person.len() as u64,
        profiles: per_profile.len() as u64,
        precision,
        recall,
        f1,
        true_pairs: truth,
        predicted_pairs: predicted,
        correct_pairs: correct,
        over_merged_profiles: persons_in_profile.values().filter(|&&n| n > 1).count() as u64,
        under_merged_persons: profiles_of_person.values().filter(|&&n| n > 1).count() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rows: &[(&str, &str)]) -> HashMap<(String, String), String> {
        rows.iter()
            .map(|(id, who)| (("email".to_string(), id.to_string()), who.to_string()))
            .collect()
    }

    #[test]
    fn pairwise_scores_count_pairs() {
        let truth = map(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "2")]);
        // a, b together; c alone; d wrongly with a and b.
        let found = map(&[("a", "p"), ("b", "p"), ("d", "p"), ("c", "q")]);
        let e = score(&truth, &found, 0);
        assert_eq!(
            (e.true_pairs, e.predicted_pairs, e.correct_pairs),
            (3, 3, 1)
        );
        assert!((e.precision - 1.0 / 3.0).abs() < 1e-12);
        assert!((e.recall - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!((e.over_merged_profiles, e.under_merged_persons), (1, 1));
    }

    #[test]
    fn unresolved_identifiers_are_their_own_profiles() {
        let truth = map(&[("a", "1"), ("b", "1")]);
        let e = score(&truth, &HashMap::new(), 0);
        assert_eq!((e.found, e.predicted_pairs, e.recall), (0, 0, 0.0));
        assert_eq!(e.precision, 1.0);
    }
}
