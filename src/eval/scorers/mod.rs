//! Scorers: what makes an answer right.
//!
//! A suite lists scorers; each one looks at every case's answer and gives a [`Verdict`]: a score in
//! `0..=1` (graded for F1 and the judge, 0 or 1 for the checks) and whether it passes. A case
//! passes when every scorer that applies to it passes it. A scorer takes what it compares against
//! from the suite (`values`, `pattern`, `schema`), from the case (`expect.*`), or from the case's
//! `reference`, and applies to the cases that give it something, so one golden set can mix
//! cases with references, number answers and guardrail expectations. So that a gap in the golden
//! data is not read as a pass, a suite refuses to load when a case has no scorer that applies,
//! or a scorer applies to no case.
//!
//! Every scorer but the judge is a pure function of the case and the answer. The judge asks a
//! model through the gateway, so the runner calls it ([`Scorer::judge`]) with its client.

pub mod guardrail;
pub mod json;
pub mod judge;
pub mod matching;
pub mod numeric;
pub mod overlap;

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use super::dataset::Case;
use super::normalise::Normalise;

/// One scorer's judgement of one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// In `0..=1`.
    pub score: f64,
    pub passed: bool,
    /// Why it failed (or what a graded scorer saw), for the record.
    pub detail: Option<String>,
}

/// What the gateway answered, as the scorers see it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The answer's text; empty when the request was refused.
    pub text: &'a str,
    /// Set when a guardrail stopped the case.
    pub blocked: Option<Blocked>,
}

/// How a guardrail stopped a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocked {
    /// The request was refused: 400 with code `content_filter`.
    Input,
    /// The answer was cut: `finish_reason: "content_filter"`.
    Output,
}

/// A `[[scorer]]` table, as read. `type` picks the variant.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScorerConfig {
    Exact(matching::MatchConfig),
    Normalised(matching::MatchConfig),
    Contains(matching::ListConfig),
    AllOf(matching::ListConfig),
    AnyOf(matching::ListConfig),
    NoneOf(matching::ListConfig),
    Regex(matching::RegexConfig),
    Numeric(numeric::NumericConfig),
    Json(json::JsonConfig),
    JsonSchema(json::SchemaConfig),
    F1(overlap::F1Config),
    Judge(judge::JudgeConfig),
    Guardrail(guardrail::GuardrailConfig),
}

/// A checked scorer.
#[derive(Debug)]
pub struct Scorer {
    /// The `name` key, or the type; unique in a suite, it keys the record's scores.
    pub name: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Match(matching::Match),
    List(matching::List),
    Regex(matching::Pattern),
    Numeric(numeric::Numeric),
    Json(json::ValidJson),
    Schema(json::Schema),
    F1(overlap::F1),
    Judge(judge::Judge),
    Guardrail(guardrail::Guardrail),
}

// === impl Verdict ===

impl Verdict {
    /// A check: 1 when it passes, else 0 with the reason.
    pub fn check(passed: bool, why_not: impl FnOnce() -> String) -> Verdict {
        Verdict {
            score: if passed { 1.0 } else { 0.0 },
            passed,
            detail: (!passed).then(why_not),
        }
    }

    /// A failure with a reason.
    pub fn fail(why: impl Into<String>) -> Verdict {
        Verdict {
            score: 0.0,
            passed: false,
            detail: Some(why.into()),
        }
    }
}

// === impl ScorerConfig ===

impl ScorerConfig {
    /// The type, as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ScorerConfig::Exact(_) => "exact",
            ScorerConfig::Normalised(_) => "normalised",
            ScorerConfig::Contains(_) => "contains",
            ScorerConfig::AllOf(_) => "all_of",
            ScorerConfig::AnyOf(_) => "any_of",
            ScorerConfig::NoneOf(_) => "none_of",
            ScorerConfig::Regex(_) => "regex",
            ScorerConfig::Numeric(_) => "numeric",
            ScorerConfig::Json(_) => "json",
            ScorerConfig::JsonSchema(_) => "json_schema",
            ScorerConfig::F1(_) => "f1",
            ScorerConfig::Judge(_) => "judge",
            ScorerConfig::Guardrail(_) => "guardrail",
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            ScorerConfig::Exact(c) | ScorerConfig::Normalised(c) => c.name.as_deref(),
            ScorerConfig::Contains(c)
            | ScorerConfig::AllOf(c)
            | ScorerConfig::AnyOf(c)
            | ScorerConfig::NoneOf(c) => c.name.as_deref(),
            ScorerConfig::Regex(c) => c.name.as_deref(),
            ScorerConfig::Numeric(c) => c.name.as_deref(),
            ScorerConfig::Json(c) => c.name.as_deref(),
            ScorerConfig::JsonSchema(c) => c.name.as_deref(),
            ScorerConfig::F1(c) => c.name.as_deref(),
            ScorerConfig::Judge(c) => c.name.as_deref(),
            ScorerConfig::Guardrail(c) => c.name.as_deref(),
        }
    }
}

// === impl Scorer ===

impl Scorer {
    /// Checks a scorer's table; `base` resolves relative file names (`schema_file`). An error
    /// names the key inside the table.
    pub fn build(config: ScorerConfig, base: &Path) -> Result<Scorer, String> {
        let name = config.name().unwrap_or(config.kind()).to_owned();
        if name.trim().is_empty() {
            return Err("`name`: must not be empty".into());
        }
        use matching::ListMode;
        let kind = match config {
            ScorerConfig::Exact(c) => Kind::Match(matching::Match::new(&c, Normalise::NONE)),
            ScorerConfig::Normalised(c) => Kind::Match(matching::Match::new(&c, Normalise::ALL)),
            ScorerConfig::Contains(c) => Kind::List(matching::List::new(c, ListMode::Contains)?),
            ScorerConfig::AllOf(c) => Kind::List(matching::List::new(c, ListMode::AllOf)?),
            ScorerConfig::AnyOf(c) => Kind::List(matching::List::new(c, ListMode::AnyOf)?),
            ScorerConfig::NoneOf(c) => Kind::List(matching::List::new(c, ListMode::NoneOf)?),
            ScorerConfig::Regex(c) => Kind::Regex(matching::Pattern::new(c)?),
            ScorerConfig::Numeric(c) => Kind::Numeric(numeric::Numeric::new(c)?),
            ScorerConfig::Json(c) => Kind::Json(json::ValidJson::new(c)),
            ScorerConfig::JsonSchema(c) => Kind::Schema(json::Schema::new(c, base)?),
            ScorerConfig::F1(c) => Kind::F1(overlap::F1::new(c)?),
            ScorerConfig::Judge(c) => Kind::Judge(judge::Judge::new(c)?),
            ScorerConfig::Guardrail(c) => Kind::Guardrail(guardrail::Guardrail::new(c)?),
        };
        Ok(Scorer { name, kind })
    }

    /// Whether `case` gives this scorer something to compare against.
    pub fn applies(&self, case: &Case) -> bool {
        match &self.kind {
            Kind::Match(_) | Kind::F1(_) => !case.references.is_empty(),
            Kind::List(s) => s.applies(case),
            Kind::Regex(s) => s.applies(case),
            Kind::Numeric(s) => s.applies(case),
            Kind::Json(_) | Kind::Judge(_) => true,
            Kind::Schema(s) => s.applies(case),
            Kind::Guardrail(s) => s.applies(case),
        }
    }

    /// What a case must give this scorer for it to apply, for messages.
    pub fn needs(&self) -> String {
        match &self.kind {
            Kind::Match(_) | Kind::F1(_) => "a `reference`".into(),
            Kind::List(s) => s.needs(),
            Kind::Regex(_) => "a `pattern` in the suite or `expect.regex`".into(),
            Kind::Numeric(_) => "`expect.number` or a `reference` with a number in it".into(),
            Kind::Json(_) | Kind::Judge(_) => "nothing".into(),
            Kind::Schema(_) => "a `schema` in the suite or `expect.schema`".into(),
            Kind::Guardrail(_) => "`expect` in the suite or `expect.guardrail`".into(),
        }
    }

    /// Checks what a case gives a scorer that applies to it (a pattern compiles, no value is
    /// empty); the error names the case's key.
    pub fn check_case(&self, case: &Case) -> Result<(), String> {
        match &self.kind {
            Kind::List(s) => s.check_case(case),
            Kind::Regex(s) => s.check_case(case),
            Kind::Schema(s) => s.check_case(case),
            _ => Ok(()),
        }
    }

    /// The judge, when this scorer is one: its verdict needs a model call, made by the runner.
    pub fn judge(&self) -> Option<&judge::Judge> {
        match &self.kind {
            Kind::Judge(j) => Some(j),
            _ => None,
        }
    }

    /// Scores an answer. A judge scores nothing here (see [`Scorer::judge`]).
    pub fn score(&self, case: &Case, answer: &Answer<'_>) -> Verdict {
        match &self.kind {
            Kind::Match(s) => s.score(case, answer.text),
            Kind::List(s) => s.score(case, answer.text),
            Kind::Regex(s) => s.score(case, answer.text),
            Kind::Numeric(s) => s.score(case, answer.text),
            Kind::Json(s) => s.score(answer.text),
            Kind::Schema(s) => s.score(case, answer.text),
            Kind::F1(s) => s.score(case, answer.text),
            Kind::Guardrail(s) => s.score(case, answer),
            Kind::Judge(_) => Verdict::fail("a judge is scored by the runner"),
        }
    }
}

/// Builds every scorer of a suite: errors name `scorer[i]` and the key; names must be unique.
pub fn build_all(configs: Vec<ScorerConfig>, base: &Path) -> Result<Vec<Scorer>, String> {
    if configs.is_empty() {
        return Err("`scorer`: a suite needs at least one `[[scorer]]`".into());
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(configs.len());
    for (i, c) in configs.into_iter().enumerate() {
        let s = Scorer::build(c, base).map_err(|e| format!("`scorer[{i}]`: {e}"))?;
        if !names.insert(s.name.clone()) {
            return Err(format!(
                "`scorer[{i}].name`: `{}` is used twice; give each scorer of a type a `name`",
                s.name
            ));
        }
        out.push(s);
    }
    Ok(out)
}

/// The three optional normalisation keys of a text scorer, over a default.
fn normalise(
    default: Normalise,
    ignore_case: Option<bool>,
    collapse_whitespace: Option<bool>,
    strip_punctuation: Option<bool>,
) -> Normalise {
    Normalise {
        ignore_case: ignore_case.unwrap_or(default.ignore_case),
        collapse_whitespace: collapse_whitespace.unwrap_or(default.collapse_whitespace),
        strip_punctuation: strip_punctuation.unwrap_or(default.strip_punctuation),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::eval::dataset::Expect;

    /// A case with these references and expectations.
    pub fn case(references: &[&str], expect: Expect) -> Case {
        Case {
            id: "c".into(),
            line: 1,
            messages: Vec::new(),
            references: references.iter().map(|s| (*s).to_owned()).collect(),
            expect,
            tags: Vec::new(),
            variables: None,
        }
    }

    /// A scorer from a TOML table.
    pub fn scorer(toml: &str) -> Result<Scorer, String> {
        let c: ScorerConfig = toml::from_str(toml).map_err(|e| e.to_string())?;
        Scorer::build(c, Path::new("."))
    }

    pub fn answer(text: &str) -> Answer<'_> {
        Answer {
            text,
            blocked: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn names_default_to_the_type_and_must_be_unique() {
        let configs: Vec<ScorerConfig> = ["type = \"exact\"", "type = \"exact\""]
            .iter()
            .map(|t| toml::from_str(t).unwrap())
            .collect();
        let e = build_all(configs, Path::new(".")).unwrap_err();
        assert!(e.contains("scorer[1].name") && e.contains("exact"), "{e}");
        assert!(build_all(Vec::new(), Path::new(".")).is_err());
    }

    #[test]
    fn unknown_keys_and_types_are_named() {
        let e = scorer("type = \"contains\"\nvaleus = [\"x\"]").unwrap_err();
        assert!(e.contains("valeus"), "{e}");
        let e = scorer("type = \"containz\"").unwrap_err();
        assert!(e.contains("containz"), "{e}");
    }

    #[test]
    fn a_scorer_applies_where_the_case_gives_it_something() {
        let s = scorer("type = \"exact\"").unwrap();
        assert!(!s.applies(&case(&[], Default::default())));
        assert!(s.applies(&case(&["x"], Default::default())));
        assert!(s.needs().contains("reference"));
        let s = scorer("type = \"json\"").unwrap();
        assert!(s.applies(&case(&[], Default::default())));
    }
}
