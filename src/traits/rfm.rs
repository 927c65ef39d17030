//! RFM: recency (days since the last purchase), frequency (purchases, same-day ones counted
//! once) and monetary value (total spend), each scored 1 to 5 by quintile among buyers (5 is
//! best: most recent, most frequent, highest spend), and the usual named groups from the
//! recency and frequency scores.

/// Scores 1..=5 by quintile of `values`; `higher_is_better` says which end scores 5. Equal values
/// get equal scores.
pub fn quintiles(values: &[f64], higher_is_better: bool) -> Vec<u8> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut scores = vec![0u8; n];
    let mut start = 0;
    while start < n {
        // A run of equal values takes the score of its first position.
        let mut end = start;
        while end + 1 < n && values[order[end + 1]] == values[order[start]] {
            end += 1;
        }
        let score = 1 + (5 * start / n) as u8;
        for &i in &order[start..=end] {
            scores[i] = if higher_is_better { score } else { 6 - score };
        }
        start = end + 1;
    }
    scores
}

/// The named group of a recency and frequency score.
pub fn group(r: u8, f: u8) -> &'static str {
    match (r, f) {
        (4..=5, 4..=5) => "champions",
        (4..=5, 2..=3) => "potential_loyalists",
        (4..=5, _) => "new_customers",
        (3, 4..=5) => "loyal",
        (3, 3) => "need_attention",
        (3, _) => "about_to_sleep",
        (1, 4..=5) => "cant_lose",
        (2, 3..=5) | (1, 3) => "at_risk",
        _ => "hibernating",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quintiles_split_evenly_and_keep_ties_together() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quintiles(&v, true), vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        assert_eq!(quintiles(&v, false), vec![5, 5, 4, 4, 3, 3, 2, 2, 1, 1]);
        assert_eq!(quintiles(&[7.0, 7.0, 7.0, 1.0], true), vec![2, 2, 2, 1]);
    }

    #[test]
    fn every_score_pair_has_a_group() {
        for r in 1..=5 {
            for f in 1..=5 {
                assert!(!group(r, f).is_empty());
            }
        }
        assert_eq!(group(5, 5), "champions");
        assert_eq!(group(1, 5), "cant_lose");
        assert_eq!(group(1, 1), "hibernating");
    }
}
