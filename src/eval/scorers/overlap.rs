//! `type = "f1"`: token overlap with the reference, as SQuAD scores extractive answers.
//!
//! Exact match is too strict for free text and `contains` too lenient for long answers; token F1
//! grades how much of the reference an answer says and how much else it says. Both sides are
//! normalised as SQuAD does (lower case, punctuation and articles removed), tokens are counted as
//! a multiset, and the best F1 over the case's references is the score. Two empty texts agree
//! (F1 = 1); an empty text against a non-empty one scores 0.

use std::collections::HashMap;

use serde::Deserialize;

use super::Verdict;
use crate::eval::dataset::Case;
use crate::eval::normalise::squad_tokens;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct F1Config {
    pub name: Option<String>,
    /// The F1 an answer needs to pass (default 0.5).
    pub min: Option<f64>,
}

#[derive(Debug)]
pub struct F1 {
    min: f64,
}

// === impl F1 ===

impl F1 {
    pub fn new(c: F1Config) -> Result<F1, String> {
        let min = c.min.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&min) {
            return Err("`min`: must be between 0 and 1".into());
        }
        Ok(F1 { min })
    }

    pub fn score(&self, case: &Case, answer: &str) -> Verdict {
        let got = squad_tokens(answer);
        let best = case
            .references
            .iter()
            .map(|r| f1(&got, &squad_tokens(r)))
            .fold(0.0, f64::max);
        Verdict {
            score: best,
            passed: best >= self.min,
            detail: Some(format!("F1 {best:.3}")),
        }
    }
}

/// Token-overlap F1 of two token lists.
pub fn f1(answer: &[String], reference: &[String]) -> f64 {
    if answer.is_empty() || reference.is_empty() {
        return if answer.is_empty() && reference.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in reference {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0usize;
    for t in answer {
        if let Some(n) = counts.get_mut(t.as_str()).filter(|n| **n > 0) {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / answer.len() as f64;
    let recall = common as f64 / reference.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::dataset::Expect;
    use crate::eval::scorers::test_support::*;

    fn tokens(s: &str) -> Vec<String> {
        squad_tokens(s)
    }

    #[test]
    fn squad_f1() {
        assert_eq!(
            f1(&tokens("The Eiffel Tower."), &tokens("eiffel tower")),
            1.0
        );
        // 2 common of 3 answer tokens and 2 reference tokens: P = 2/3, R = 1.
        let v = f1(&tokens("the big eiffel tower"), &tokens("Eiffel Tower"));
        assert!((v - 0.8).abs() < 1e-9, "{v}");
        assert_eq!(f1(&tokens(""), &tokens("")), 1.0);
        assert_eq!(f1(&tokens(""), &tokens("x")), 0.0);
        assert_eq!(f1(&tokens("a b"), &tokens("c d")), 0.0);
        // Repeated tokens count once per occurrence in the reference.
        let v = f1(&tokens("paris paris paris"), &tokens("paris"));
        assert!((v - 0.5).abs() < 1e-9, "{v}");
        assert_eq!(f1(&tokens("Ünïcode «ok»"), &tokens("ünïcode ok")), 1.0);
    }

    #[test]
    fn best_reference_and_threshold() {
        let s = scorer("type = \"f1\"\nmin = 0.6").unwrap();
        let c = case(&["nothing alike", "New York City"], Expect::default());
        let v = s.score(&c, &answer("new york"));
        assert!((v.score - 0.8).abs() < 1e-9);
        assert!(v.passed);
        assert!(!s.score(&c, &answer("")).passed);
        assert!(scorer("type = \"f1\"\nmin = 2")
            .unwrap_err()
            .contains("min"));
    }
}
