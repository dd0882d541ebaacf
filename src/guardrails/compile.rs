//! From policy files to a policy that can scan.
//!
//! This is the one place that decides whether a rule makes sense: its kind is known, its keys
//! belong to that kind, its patterns compile, an output pattern has a longest match (computed from
//! the pattern or declared with `max_len`) and no anchors, ids are unique. A policy that compiles is
//! safe to swap in; everything else about it (do its tests pass?) is checked by [`super::tools`].

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;

use super::engine::{Engine, Keyword, Probe};
use super::policy::{PolicyError, RawRule, RawTest, Sources};
use super::probe::ProbeSpec;
use super::{injection, pii, prefix, secrets, Action, Direction};

/// What a rule looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regex,
    Keywords,
    Pii,
    Secrets,
    Injection,
    Limits,
}

/// Whether a rule acts or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Log and count what the rule would do; change nothing.
    Shadow,
}

/// How a redacted span is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redaction {
    /// By a fixed label; `None` uses the entity's label (`[EMAIL]`).
    Label(Option<String>),
    /// Each character by this one.
    Mask(char),
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Client-facing model names; empty means all.
    pub models: Vec<String>,
    /// API key names; empty means all.
    pub keys: Vec<String>,
}

/// The operating limits a `limits` rule enforces on a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_prompt_chars: Option<usize>,
    /// Estimated as one token per four characters, rounded up.
    pub max_prompt_tokens: Option<usize>,
    pub max_messages: Option<usize>,
    pub max_completion_tokens: Option<u32>,
}

/// What a test case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Block,
    Redact,
    Flag,
    Pass,
}

/// A rule's own test case.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub text: String,
    pub expect: Expect,
    pub output: Option<String>,
    pub direction: Option<Direction>,
    pub max_tokens: Option<u32>,
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub kind: Kind,
    /// The action as written; see [`Rule::effective_action`].
    pub action: Action,
    pub mode: Mode,
    pub input: bool,
    pub output: bool,
    pub scope: Scope,
    /// What a blocked client is told.
    pub message: String,
    pub redaction: Redaction,
    /// Injection: the score at which the rule fires.
    pub threshold: f32,
    pub limits: Limits,
    pub tests: Vec<TestCase>,
    /// The file the rule came from, for messages.
    pub file: String,
}

/// A compiled policy: its rules and one engine per direction. A clone shares the compiled automata
/// but none of their search caches.
#[derive(Clone)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub(crate) input: Engine,
    pub(crate) output: Engine,
    version: Arc<str>,
    /// The version as the `x-sluice-policy-version` value, made once rather than per response;
    /// `None` when the version is not a valid header value.
    version_header: Option<HeaderValue>,
    /// Longest match of each output rule, for the checker and the docs.
    pub output_max_len: Vec<(String, usize)>,
}

// === impl Kind ===

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Regex => "regex",
            Kind::Keywords => "keywords",
            Kind::Pii => "pii",
            Kind::Secrets => "secrets",
            Kind::Injection => "injection",
            Kind::Limits => "limits",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "regex" => Kind::Regex,
            "keywords" => Kind::Keywords,
            "pii" => Kind::Pii,
            "secrets" => Kind::Secrets,
            "injection" => Kind::Injection,
            "limits" => Kind::Limits,
            _ => return None,
        })
    }
}

// === impl Rule ===

impl Rule {
    /// The action taken: shadow mode turns every action into `flag`.
    pub fn effective_action(&self) -> Action {
        match self.mode {
            Mode::Shadow => Action::Flag,
            Mode::Enforce => self.action,
        }
    }

    /// Whether the rule covers `dir`.
    pub fn applies_to(&self, dir: Direction) -> bool {
        match dir {
            Direction::Input => self.input,
            Direction::Output => self.output,
        }
    }

    /// Whether the rule covers this model and key name.
    pub fn in_scope(&self, model: &str, key: Option<&str>) -> bool {
        let model_ok = self.scope.models.is_empty() || self.scope.models.iter().any(|m| m == model);
        let key_ok = self.scope.keys.is_empty()
            || key.is_some_and(|k| self.scope.keys.iter().any(|s| s == k));
        model_ok && key_ok
    }
}

// === impl Policy ===

impl Policy {
    /// Reads and compiles every file in `dir`.
    pub fn load(dir: &Path) -> Result<Policy, PolicyError> {
        compile(&Sources::read_dir(dir)?)
    }

    /// Compiles one TOML text (tests, tools).
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        compile(&Sources::from_str("policy.toml", text)?)
    }

    /// The hash of the policy's files.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The version as a response header value (a clone shares its bytes).
    pub fn version_header(&self) -> Option<HeaderValue> {
        self.version_header.clone()
    }

    /// The version, shared.
    pub fn version_arc(&self) -> Arc<str> {
        Arc::clone(&self.version)
    }

    pub(crate) fn engine(&self, dir: Direction) -> &Engine {
        match dir {
            Direction::Input => &self.input,
            Direction::Output => &self.output,
        }
    }

    /// The action of each rule for a request in `dir` to `model` with `key`; `None` where the rule
    /// does not apply.
    pub fn actions_for(
        &self,
        dir: Direction,
        model: &str,
        key: Option<&str>,
    ) -> Vec<Option<Action>> {
        self.rules
            .iter()
            .map(|r| {
                (r.applies_to(dir) && r.in_scope(model, key) && r.kind != Kind::Limits)
                    .then(|| r.effective_action())
            })
            .collect()
    }

    /// Every rule in `dir` with its action as written, shadow and scope ignored: how `scan` and
    /// rule tests see a policy.
    pub fn actions_all(&self, dir: Direction) -> Vec<Option<Action>> {
        self.rules
            .iter()
            .map(|r| (r.applies_to(dir) && r.kind != Kind::Limits).then_some(r.action))
            .collect()
    }

    /// Every pattern of `dir`'s engine, for benchmarks that compare the one-pass engine with a
    /// rule-by-rule loop.
    #[doc(hidden)]
    pub fn patterns(&self, dir: Direction) -> Vec<String> {
        self.engine(dir)
            .probes
            .iter()
            .map(|p| p.spec.pattern.clone())
            .collect()
    }

    /// The rule index by id.
    pub fn rule_index(&self, id: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.id == id)
    }
}

/// Compiles parsed sources into a policy.
pub fn compile(src: &Sources) -> Result<Policy, PolicyError> {
    let mut rules = Vec::new();
    let mut seen = BTreeSet::new();
    let mut probes: [Vec<(Probe, regex_syntax::hir::Hir)>; 2] = [Vec::new(), Vec::new()];
    let mut keywords: [Vec<Keyword>; 2] = [Vec::new(), Vec::new()];
    let mut output_max_len = Vec::new();
    for (path, file) in &src.files {
        let fname = path.display().to_string();
        for (i, raw) in file.rule.iter().enumerate() {
            let err = |key: &str, msg: String| {
                let who = if raw.id.is_empty() {
                    format!("rule[{i}]")
                } else {
                    format!("rule `{}`", raw.id)
                };
                PolicyError::new(&fname, format!("{who}: `{key}`: {msg}"))
            };
            if raw.id.trim().is_empty() {
                return Err(err("id", "must not be empty".into()));
            }
            if !seen.insert(raw.id.clone()) {
                return Err(err("id", "duplicate rule id".into()));
            }
            let rule_idx = rules.len();
            let rule = check_rule(raw, &fname, &err)?;
            let (specs, kws) = detectors(raw, &rule, src, &err)?;
            let min_score = raw.min_score.unwrap_or(0.5);
            let mut longest = 0usize;
            for spec in specs {
                let hir = prefix::parse(&spec.pattern).map_err(|e| err("pattern", e))?;
                let facts = prefix::facts(&hir);
                if facts.matches_empty {
                    return Err(err(
                        "pattern",
                        format!("`{}` matches the empty string", spec.pattern),
                    ));
                }
                if rule.output {
                    if facts.uses_anchors {
                        return Err(err("pattern", format!("`{}` uses ^, $, \\A or \\z, which a streamed output cannot honour; use \\b", spec.pattern)));
                    }
                    match (facts.max_len, raw.max_len) {
                        (Some(m), _) => longest = longest.max(m),
                        (None, Some(declared)) => longest = longest.max(declared),
                        (None, None) => {
                            return Err(err("pattern", format!("`{}` has no longest match; an output pattern must be bounded (use {{m,n}} instead of + or *, or declare `max_len`)", spec.pattern)))
                        }
                    }
                }
                let regex =
                    regex::Regex::new(&spec.pattern).map_err(|e| err("pattern", e.to_string()))?;
                let value_group = regex.capture_names().position(|n| n == Some("value"));
                for (d, on) in [(0, rule.input), (1, rule.output)] {
                    if on {
                        probes[d].push((
                            Probe {
                                rule: rule_idx,
                                spec: spec.clone(),
                                regex: regex.clone(),
                                value_group,
                                extra_positive: raw.context_words.clone().unwrap_or_default(),
                                min_score,
                            },
                            hir.clone(),
                        ));
                    }
                }
            }
            for k in kws {
                longest = longest.max(k.text.len());
                for (d, on) in [(0, rule.input), (1, rule.output)] {
                    if on {
                        keywords[d].push(Keyword {
                            rule: rule_idx,
                            text: k.text.clone(),
                            case_sensitive: k.case_sensitive,
                            whole_word: k.whole_word,
                            entity: k.entity,
                            label: k.label,
                            weight: k.weight,
                        });
                    }
                }
            }
            if rule.output && rule.kind != Kind::Limits {
                output_max_len.push((rule.id.clone(), longest));
            }
            rules.push(rule);
        }
    }
    let [pin, pout] = probes;
    let [kin, kout] = keywords;
    let build =
        |ps: Vec<(Probe, regex_syntax::hir::Hir)>, ks: Vec<Keyword>, what: &str, streamed: bool| {
            let (ps, hirs): (Vec<Probe>, Vec<_>) = ps.into_iter().unzip();
            Engine::new(ps, &hirs, ks, streamed).map_err(|e| {
                PolicyError::new(
                    src.dir.display().to_string(),
                    format!("the {what} rules do not compile together: {e}"),
                )
            })
        };
    Ok(Policy {
        // Requests are checked whole; only answers are scanned as they stream.
        input: build(pin, kin, "input", false)?,
        output: build(pout, kout, "output", true)?,
        rules,
        version: Arc::from(src.version.as_str()),
        version_header: HeaderValue::from_str(&src.version).ok(),
        output_max_len,
    })
}

fn parse_direction(s: &str) -> Option<(bool, bool)> {
    Some(match s {
        "input" => (true, false),
        "output" => (false, true),
        "both" => (true, true),
        _ => return None,
    })
}

fn check_rule(
    raw: &RawRule,
    file: &str,
    err: &dyn Fn(&str, String) -> PolicyError,
) -> Result<Rule, PolicyError> {
    let kind = Kind::parse(&raw.kind).ok_or_else(|| {
        err(
            "kind",
            format!(
                "unknown kind `{}`; expected regex, keywords, pii, secrets, injection or limits",
                raw.kind
            ),
        )
    })?;
    let action = Action::parse(&raw.action).ok_or_else(|| {
        err(
            "action",
            format!(
                "unknown action `{}`; expected block, redact or flag",
                raw.action
            ),
        )
    })?;
    let mode = match raw.mode.as_deref() {
        None | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(other) => {
            return Err(err(
                "mode",
                format!("`{other}`; expected enforce or shadow"),
            ))
        }
    };
    let default_dir = if kind == Kind::Limits || kind == Kind::Injection {
        "input"
    } else {
        "both"
    };
    let (input, output) = parse_direction(raw.direction.as_deref().unwrap_or(default_dir))
        .ok_or_else(|| err("direction", "expected input, output or both".into()))?;
    if kind == Kind::Limits && output {
        return Err(err(
            "direction",
            "limits apply to the request; use direction = \"input\"".into(),
        ));
    }
    // Keys that belong to other kinds are refused, so a misplaced key is not silently ignored.
    let allowed: &[&str] = match kind {
        Kind::Regex => &["pattern", "patterns", "max_len"],
        Kind::Keywords => &[
            "keywords",
            "keywords_file",
            "whole_word",
            "case_sensitive",
            "max_len",
        ],
        Kind::Pii => &["entities", "min_score", "context_words"],
        Kind::Secrets => &["secrets", "min_entropy"],
        Kind::Injection => &["threshold", "phrases", "phrase_weight", "max_len"],
        Kind::Limits => &[
            "max_prompt_chars",
            "max_prompt_tokens",
            "max_messages",
            "max_completion_tokens",
        ],
    };
    for (key, present) in kind_keys(raw) {
        if present && !allowed.contains(&key) {
            return Err(err(
                key,
                format!("is not a key of kind `{}`", kind.as_str()),
            ));
        }
    }
    let redaction = match raw.redact.as_deref() {
        None | Some("label") => Redaction::Label(raw.label.clone()),
        Some("mask") => Redaction::Mask(raw.mask_char.unwrap_or('*')),
        Some(other) => return Err(err("redact", format!("`{other}`; expected label or mask"))),
    };
    let limits = Limits {
        max_prompt_chars: raw.max_prompt_chars,
        max_prompt_tokens: raw.max_prompt_tokens,
        max_messages: raw.max_messages,
        max_completion_tokens: raw.max_completion_tokens,
    };
    if kind == Kind::Limits {
        if limits == Limits::default() {
            return Err(err(
                "max_prompt_chars",
                "a limits rule needs at least one limit".into(),
            ));
        }
        let prompt_limits = limits.max_prompt_chars.is_some()
            || limits.max_prompt_tokens.is_some()
            || limits.max_messages.is_some();
        if action == Action::Redact && prompt_limits {
            return Err(err("action", "redact on a limits rule only clamps max_completion_tokens; prompt limits can block or flag".into()));
        }
    }
    let threshold = raw.threshold.unwrap_or(injection::DEFAULT_THRESHOLD);
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(err("threshold", "must be above 0".into()));
    }
    if let Some(s) = raw.min_score {
        if !(0.0..=1.0).contains(&s) {
            return Err(err("min_score", "must be between 0 and 1".into()));
        }
    }
    let mut tests = Vec::with_capacity(raw.test.len());
    for (j, t) in raw.test.iter().enumerate() {
        tests.push(check_test(t).map_err(|m| err(&format!("test[{j}]"), m))?);
    }
    let scope = raw.scope.clone().unwrap_or_default();
    Ok(Rule {
        id: raw.id.clone(),
        description: raw.description.clone(),
        kind,
        action,
        mode,
        input,
        output,
        scope: Scope {
            models: scope.models,
            keys: scope.keys,
        },
        message: raw.message.clone().unwrap_or_else(|| {
            format!(
                "The request was refused by the content policy ({}).",
                raw.id
            )
        }),
        redaction,
        threshold,
        limits,
        tests,
        file: file.to_string(),
    })
}

fn kind_keys(raw: &RawRule) -> [(&'static str, bool); 20] {
    [
        ("pattern", raw.pattern.is_some()),
        ("patterns", raw.patterns.is_some()),
        ("max_len", raw.max_len.is_some()),
        ("keywords", raw.keywords.is_some()),
        ("keywords_file", raw.keywords_file.is_some()),
        ("whole_word", raw.whole_word.is_some()),
        ("case_sensitive", raw.case_sensitive.is_some()),
        ("entities", raw.entities.is_some()),
        ("min_score", raw.min_score.is_some()),
        ("context_words", raw.context_words.is_some()),
        ("secrets", raw.secrets.is_some()),
        ("min_entropy", raw.min_entropy.is_some()),
        ("threshold", raw.threshold.is_some()),
        ("phrases", raw.phrases.is_some()),
        ("phrase_weight", raw.phrase_weight.is_some()),
        ("max_prompt_chars", raw.max_prompt_chars.is_some()),
        ("max_prompt_tokens", raw.max_prompt_tokens.is_some()),
        ("max_messages", raw.max_messages.is_some()),
        ("max_completion_tokens", raw.max_completion_tokens.is_some()),
        (
            "mask_char",
            raw.mask_char.is_some() && raw.redact.as_deref() != Some("mask"),
        ),
    ]
}

fn check_test(t: &RawTest) -> Result<TestCase, String> {
    let expect = match t.expect.as_str() {
        "block" => Expect::Block,
        "redact" => Expect::Redact,
        "flag" => Expect::Flag,
        "pass" => Expect::Pass,
        other => {
            return Err(format!(
                "expect = `{other}`; expected block, redact, flag or pass"
            ))
        }
    };
    let direction = match t.direction.as_deref() {
        None => None,
        Some("input") => Some(Direction::Input),
        Some("output") => Some(Direction::Output),
        Some(other) => return Err(format!("direction = `{other}`; expected input or output")),
    };
    Ok(TestCase {
        text: t.text.clone(),
        expect,
        output: t.output.clone(),
        direction,
        max_tokens: t.max_tokens,
    })
}

/// A keyword before it is given to the engine.
struct KeywordSpec {
    text: String,
    case_sensitive: bool,
    whole_word: bool,
    entity: &'static str,
    label: &'static str,
    weight: f32,
}

fn detectors(
    raw: &RawRule,
    rule: &Rule,
    src: &Sources,
    err: &dyn Fn(&str, String) -> PolicyError,
) -> Result<(Vec<ProbeSpec>, Vec<KeywordSpec>), PolicyError> {
    let mut specs = Vec::new();
    let mut kws = Vec::new();
    match rule.kind {
        Kind::Regex => {
            let mut pats: Vec<String> = raw.pattern.iter().cloned().collect();
            pats.extend(raw.patterns.iter().flatten().cloned());
            if pats.is_empty() {
                return Err(err(
                    "pattern",
                    "a regex rule needs `pattern` or `patterns`".into(),
                ));
            }
            for p in pats {
                specs.push(ProbeSpec::new("regex", &p));
            }
        }
        Kind::Keywords => {
            let mut words: Vec<String> = raw.keywords.clone().unwrap_or_default();
            if let Some(f) = &raw.keywords_file {
                let list = src
                    .keyword_files
                    .get(f)
                    .ok_or_else(|| err("keywords_file", format!("`{f}` was not read")))?;
                words.extend(list.iter().cloned());
            }
            words.retain(|w| !w.trim().is_empty());
            if words.is_empty() {
                return Err(err(
                    "keywords",
                    "a keywords rule needs at least one keyword".into(),
                ));
            }
            for w in words {
                kws.push(KeywordSpec {
                    text: w,
                    case_sensitive: raw.case_sensitive.unwrap_or(false),
                    whole_word: raw.whole_word.unwrap_or(true),
                    entity: "keyword",
                    label: "[REDACTED]",
                    weight: 1.0,
                });
            }
        }
        Kind::Pii => {
            let entities = raw.entities.clone().unwrap_or_default();
            if entities.is_empty() {
                return Err(err(
                    "entities",
                    format!("name at least one of {}", pii::ENTITIES.join(", ")),
                ));
            }
            for e in &entities {
                let p = pii::probes(e).ok_or_else(|| {
                    err(
                        "entities",
                        format!(
                            "unknown entity `{e}`; expected one of {}",
                            pii::ENTITIES.join(", ")
                        ),
                    )
                })?;
                specs.extend(p);
            }
        }
        Kind::Secrets => {
            let names = raw
                .secrets
                .clone()
                .unwrap_or_else(|| secrets::SECRETS.iter().map(|s| s.to_string()).collect());
            let min_entropy = raw.min_entropy.unwrap_or(secrets::DEFAULT_MIN_ENTROPY);
            for s in &names {
                let p = secrets::probes(s, min_entropy).ok_or_else(|| {
                    err(
                        "secrets",
                        format!(
                            "unknown secret type `{s}`; expected one of {}",
                            secrets::SECRETS.join(", ")
                        ),
                    )
                })?;
                specs.extend(p);
            }
        }
        Kind::Injection => {
            specs.extend(injection::probes());
            for ph in raw.phrases.iter().flatten() {
                kws.push(KeywordSpec {
                    text: ph.clone(),
                    case_sensitive: false,
                    whole_word: true,
                    entity: "phrase",
                    label: "[REMOVED]",
                    weight: raw.phrase_weight.unwrap_or(0.5),
                });
            }
        }
        Kind::Limits => {}
    }
    if let Redaction::Label(Some(l)) = &rule.redaction {
        if l.is_empty() {
            return Err(err("label", "must not be empty".into()));
        }
    }
    Ok((specs, kws))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_err(toml: &str) -> String {
        match Policy::from_toml(toml) {
            Ok(_) => panic!("compiled: {toml}"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn unbounded_output_pattern_is_refused_unless_declared() {
        let base =
            "[[rule]]\nid = \"r\"\nkind = \"regex\"\naction = \"block\"\npattern = \"a+b\"\n";
        assert!(compile_err(base).contains("no longest match"));
        assert!(Policy::from_toml(&format!("{base}direction = \"input\"\n")).is_ok());
        assert!(Policy::from_toml(&format!("{base}max_len = 64\n")).is_ok());
    }

    #[test]
    fn misplaced_keys_and_unknown_values_are_named() {
        let m = compile_err("[[rule]]\nid = \"r\"\nkind = \"regex\"\naction = \"block\"\npattern = \"x\"\nentities = [\"email\"]\n");
        assert!(m.contains("`entities`") && m.contains("rule `r`"), "{m}");
        let m = compile_err(
            "[[rule]]\nid = \"r\"\nkind = \"pii\"\naction = \"block\"\nentities = [\"dna\"]\n",
        );
        assert!(m.contains("unknown entity `dna`"), "{m}");
        let m = compile_err(
            "[[rule]]\nid = \"r\"\nkind = \"regex\"\naction = \"zap\"\npattern = \"x\"\n",
        );
        assert!(m.contains("`action`"), "{m}");
    }

    #[test]
    fn duplicate_ids_empty_matches_and_anchors_are_refused() {
        let r = "[[rule]]\nid = \"r\"\nkind = \"regex\"\naction = \"flag\"\npattern = \"x\"\n";
        assert!(compile_err(&format!("{r}{r}")).contains("duplicate"));
        let m = compile_err(
            "[[rule]]\nid = \"r\"\nkind = \"regex\"\naction = \"flag\"\npattern = \"x*\"\n",
        );
        assert!(m.contains("empty string"), "{m}");
        let m = compile_err(
            "[[rule]]\nid = \"r\"\nkind = \"regex\"\naction = \"flag\"\npattern = \"^x\"\n",
        );
        assert!(m.contains("streamed"), "{m}");
    }
}
