//! The text-matching scorers: `exact`, `normalised`, the `contains` family and `regex`.
//!
//! These are the cheap, deterministic checks a golden set leans on most. They share one
//! normalisation ([`Normalise`]), applied to both the answer and what it is compared with, so a
//! suite chooses once how lenient a comparison is: `exact` compares trimmed text, `normalised`
//! ignores case, spacing and punctuation, and the `contains` family ignores case and spacing
//! unless told otherwise.
//!
//! Values given in the suite apply to every case; a case adds its own (`expect.all_of`, …). When
//! neither gives `contains` or `any_of` a value, the case's references are used, so a plain golden
//! set (`reference` only) works with the lenient scorers unchanged.

use serde::Deserialize;

use super::{normalise, Verdict};
use crate::eval::dataset::Case;
use crate::eval::normalise::Normalise;

/// `type = "exact"` and `type = "normalised"`: the answer equals one of the references.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub name: Option<String>,
    pub ignore_case: Option<bool>,
    pub collapse_whitespace: Option<bool>,
    pub strip_punctuation: Option<bool>,
}

/// `contains`, `all_of`, `any_of`, `none_of`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    pub name: Option<String>,
    /// Strings for every case, besides the case's own.
    #[serde(default)]
    pub values: Vec<String>,
    pub ignore_case: Option<bool>,
    pub collapse_whitespace: Option<bool>,
    pub strip_punctuation: Option<bool>,
}

/// `type = "regex"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexConfig {
    pub name: Option<String>,
    /// A pattern every answer must match, besides the case's `expect.regex`.
    pub pattern: Option<String>,
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Debug)]
pub struct Match {
    normalise: Normalise,
}

/// How a list of strings is held against the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMode {
    /// The answer contains the value (any one, when the references stand in).
    Contains,
    AllOf,
    AnyOf,
    NoneOf,
}

#[derive(Debug)]
pub struct List {
    mode: ListMode,
    values: Vec<String>,
    normalise: Normalise,
}

#[derive(Debug)]
pub struct Pattern {
    pattern: Option<regex::Regex>,
    ignore_case: bool,
}

// === impl Match ===

impl Match {
    pub fn new(c: &MatchConfig, default: Normalise) -> Match {
        Match {
            normalise: normalise(
                default,
                c.ignore_case,
                c.collapse_whitespace,
                c.strip_punctuation,
            ),
        }
    }

    pub fn score(&self, case: &Case, answer: &str) -> Verdict {
        let got = self.normalise.apply(answer);
        let hit = case
            .references
            .iter()
            .any(|r| self.normalise.apply(r) == got);
        Verdict::check(hit, || format!("{got:?} is none of the references"))
    }
}

// === impl List ===

impl List {
    pub fn new(c: ListConfig, mode: ListMode) -> Result<List, String> {
        check_values("values", &c.values)?;
        Ok(List {
            mode,
            normalise: normalise(
                Normalise::LENIENT,
                c.ignore_case,
                c.collapse_whitespace,
                c.strip_punctuation,
            ),
            values: c.values,
        })
    }

    /// The case's own strings for this mode.
    fn own<'c>(&self, case: &'c Case) -> &'c [String] {
        let e = &case.expect;
        let own = match self.mode {
            ListMode::Contains => e.contains.as_slice(),
            ListMode::AllOf => e.all_of.as_deref().unwrap_or_default(),
            ListMode::AnyOf => e.any_of.as_deref().unwrap_or_default(),
            ListMode::NoneOf => e.none_of.as_deref().unwrap_or_default(),
        };
        let may_use_references = matches!(self.mode, ListMode::Contains | ListMode::AnyOf);
        if own.is_empty() && self.values.is_empty() && may_use_references {
            &case.references
        } else {
            own
        }
    }

    pub fn applies(&self, case: &Case) -> bool {
        !self.values.is_empty() || !self.own(case).is_empty()
    }

    pub fn check_case(&self, case: &Case) -> Result<(), String> {
        check_values(&format!("expect.{}", self.key()), self.own(case))
    }

    pub fn needs(&self) -> String {
        match self.mode {
            ListMode::Contains | ListMode::AnyOf => format!(
                "`values` in the suite, `expect.{}` or a `reference`",
                self.key()
            ),
            _ => format!("`values` in the suite or `expect.{}`", self.key()),
        }
    }

    fn key(&self) -> &'static str {
        match self.mode {
            ListMode::Contains => "contains",
            ListMode::AllOf => "all_of",
            ListMode::AnyOf => "any_of",
            ListMode::NoneOf => "none_of",
        }
    }

    pub fn score(&self, case: &Case, answer: &str) -> Verdict {
        let got = self.normalise.apply(answer);
        let values: Vec<&String> = self.values.iter().chain(self.own(case)).collect();
        let (found, missing): (Vec<&String>, Vec<&String>) = values
            .iter()
            .partition(|v| got.contains(&self.normalise.apply(v)));
        let total = values.len().max(1) as f64;
        match self.mode {
            ListMode::Contains | ListMode::AnyOf => Verdict::check(!found.is_empty(), || {
                format!("contains none of {missing:?}")
            }),
            ListMode::AllOf => Verdict {
                score: found.len() as f64 / total,
                passed: missing.is_empty(),
                detail: (!missing.is_empty()).then(|| format!("missing {missing:?}")),
            },
            ListMode::NoneOf => Verdict {
                score: missing.len() as f64 / total,
                passed: found.is_empty(),
                detail: (!found.is_empty()).then(|| format!("contains {found:?}")),
            },
        }
    }
}

/// An empty string is in every answer: a value that cannot fail is a mistake in the golden set.
fn check_values(key: &str, values: &[String]) -> Result<(), String> {
    match values.iter().position(|v| v.trim().is_empty()) {
        Some(i) => Err(format!(
            "`{key}[{i}]`: an empty string matches every answer"
        )),
        None => Ok(()),
    }
}

// === impl Pattern ===

impl Pattern {
    pub fn new(c: RegexConfig) -> Result<Pattern, String> {
        let pattern = c
            .pattern
            .map(|p| compile(&p, c.ignore_case).map_err(|e| format!("`pattern`: {e}")))
            .transpose()?;
        Ok(Pattern {
            pattern,
            ignore_case: c.ignore_case,
        })
    }

    pub fn applies(&self, case: &Case) -> bool {
        self.pattern.is_some() || case.expect.regex.is_some()
    }

    pub fn check_case(&self, case: &Case) -> Result<(), String> {
        match &case.expect.regex {
            Some(p) => compile(p, self.ignore_case)
                .map(drop)
                .map_err(|e| format!("`expect.regex`: {e}")),
            None => Ok(()),
        }
    }

    pub fn score(&self, case: &Case, answer: &str) -> Verdict {
        if let Some(p) = &self.pattern {
            if !p.is_match(answer) {
                return Verdict::fail(format!("does not match /{}/", p.as_str()));
            }
        }
        if let Some(p) = &case.expect.regex {
            match compile(p, self.ignore_case) {
                Ok(re) if re.is_match(answer) => {}
                Ok(_) => return Verdict::fail(format!("does not match /{p}/")),
                Err(e) => return Verdict::fail(format!("`expect.regex`: {e}")),
            }
        }
        Verdict::check(true, String::new)
    }
}

fn compile(pattern: &str, ignore_case: bool) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .build()
}

#[cfg(test)]
mod tests {
    use crate::eval::dataset::Expect;
    use crate::eval::scorers::test_support::*;

    fn passes(scorer: &str, refs: &[&str], expect: Expect, text: &str) -> bool {
        let s = scorer_ok(scorer);
        let c = case(refs, expect);
        assert!(s.applies(&c));
        s.check_case(&c).unwrap();
        s.score(&c, &answer(text)).passed
    }

    fn scorer_ok(t: &str) -> crate::eval::scorers::Scorer {
        scorer(t).unwrap()
    }

    #[test]
    fn exact_trims_only() {
        let t = "type = \"exact\"";
        assert!(passes(t, &["Paris"], Expect::default(), " Paris\n"));
        assert!(!passes(t, &["Paris"], Expect::default(), "paris"));
        assert!(!passes(t, &["Paris"], Expect::default(), ""));
        assert!(passes(t, &["Lyon", "Paris"], Expect::default(), "Paris"));
        assert!(passes(t, &["Zürich"], Expect::default(), "Zürich"));
    }

    #[test]
    fn normalised_ignores_case_spacing_and_punctuation_each_switchable() {
        let t = "type = \"normalised\"";
        assert!(passes(t, &["Paris"], Expect::default(), "  PARIS. "));
        assert!(passes(t, &["new york"], Expect::default(), "New\n York!"));
        assert!(passes(t, &["ZÜRICH"], Expect::default(), "zürich"));
        assert!(!passes(t, &["Paris"], Expect::default(), ""));
        let keep_case = "type = \"normalised\"\nignore_case = false";
        assert!(!passes(keep_case, &["Paris"], Expect::default(), "paris"));
        assert!(passes(keep_case, &["Paris"], Expect::default(), "Paris!"));
    }

    #[test]
    fn contains_uses_the_value_the_case_or_the_references() {
        let t = "type = \"contains\"";
        let e = Expect {
            contains: Some("Paris".into()),
            ..Default::default()
        };
        assert!(passes(t, &[], e.clone(), "It is paris."));
        assert!(!passes(t, &[], e, ""));
        assert!(passes(
            t,
            &["Paris", "Lutetia"],
            Expect::default(),
            "Lutetia, of old"
        ));
        assert!(passes(t, &["tokyo"], Expect::default(), "東京 (Tokyo)"));
        let s = scorer_ok(t);
        assert!(!s.applies(&case(&[], Expect::default())));
        let t = "type = \"contains\"\nvalues = [\"1,000\"]";
        assert!(passes(t, &[], Expect::default(), "about 1,000 people"));
        assert!(!passes(t, &[], Expect::default(), "about 1000 people"));
    }

    #[test]
    fn all_any_none_of() {
        let e = Expect {
            all_of: Some(vec!["red".into(), "blue".into()]),
            any_of: Some(vec!["red".into(), "green".into()]),
            none_of: Some(vec!["purple".into()]),
            ..Default::default()
        };
        assert!(passes("type = \"all_of\"", &[], e.clone(), "Red and BLUE"));
        let s = scorer_ok("type = \"all_of\"");
        let v = s.score(&case(&[], e.clone()), &answer("red only"));
        assert!(!v.passed);
        assert_eq!(v.score, 0.5);
        assert!(v.detail.unwrap().contains("blue"));
        assert!(passes("type = \"any_of\"", &[], e.clone(), "green"));
        assert!(!passes("type = \"any_of\"", &[], e.clone(), "blue"));
        assert!(passes("type = \"none_of\"", &[], e.clone(), "red"));
        assert!(passes("type = \"none_of\"", &[], e.clone(), ""));
        assert!(!passes("type = \"none_of\"", &[], e, "PURPLE"));
        // Suite values and the case's add up.
        let e = Expect {
            none_of: Some(vec!["b".into()]),
            ..Default::default()
        };
        let t = "type = \"none_of\"\nvalues = [\"As an AI\"]";
        assert!(!passes(t, &[], e.clone(), "as an ai, I"));
        assert!(!passes(t, &[], e, "b"));
    }

    #[test]
    fn empty_values_are_refused() {
        let e = scorer("type = \"any_of\"\nvalues = [\"x\", \" \"]").unwrap_err();
        assert!(e.contains("values[1]"), "{e}");
        let s = scorer_ok("type = \"all_of\"");
        let c = case(
            &[],
            Expect {
                all_of: Some(vec!["".into()]),
                ..Default::default()
            },
        );
        assert!(s.check_case(&c).unwrap_err().contains("expect.all_of[0]"));
    }

    #[test]
    fn regex_from_suite_and_case() {
        let t = "type = \"regex\"\npattern = '^\\d+$'";
        assert!(passes(t, &[], Expect::default(), "42"));
        assert!(!passes(t, &[], Expect::default(), "forty-two"));
        assert!(!passes(t, &[], Expect::default(), ""));
        let e = Expect {
            regex: Some("(?i)^oui$".into()),
            ..Default::default()
        };
        assert!(passes("type = \"regex\"", &[], e.clone(), "OUI"));
        assert!(passes(
            "type = \"regex\"\npattern = 'é'",
            &[],
            Expect {
                regex: Some("^.{3}$".into()),
                ..Default::default()
            },
            "été"
        ));
        let e2 = scorer("type = \"regex\"\npattern = '('").unwrap_err();
        assert!(e2.contains("pattern"), "{e2}");
        assert!(!scorer_ok("type = \"regex\"").applies(&case(&[], Expect::default())));
        let bad = case(
            &[],
            Expect {
                regex: Some("[".into()),
                ..Default::default()
            },
        );
        assert!(scorer_ok("type = \"regex\"").check_case(&bad).is_err());
        let ci = "type = \"regex\"\npattern = 'yes'\nignore_case = true";
        assert!(passes(ci, &[], Expect::default(), "YES"));
    }
}
