//! Tools for policy authors: `test`, `check`, `scan` and `cost`.
//!
//! A rule is only as good as the cases it was tried on, so rules carry their own test cases and
//! the gateway refuses to load (or reload) a policy whose tests fail. Each case runs the rule
//! alone, with its written action (shadow and scope ignored), on input and on output; an output
//! case is also streamed one character at a time and must give the same answer as the whole text.
//! `check` reports every problem in a policy rather than the first, and `scan` runs a policy over
//! a JSONL corpus so its precision can be measured. `cost` says what a compiled policy weighs:
//! each automaton's NFA and the search cache a scanning thread keeps for it (every worker thread
//! keeps one), and each pattern's share, so the rule that makes a policy heavy can be found.

use std::fmt;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use regex_automata::nfa::thompson::{self, WhichCaptures};

use super::compile::{compile, Expect, Kind, Policy, Rule, TestCase};
use super::handle::estimate_tokens;
use super::occurs::Footprint;
use super::policy::{RawFile, Sources};
use super::prefix;
use super::scan::Scanner;
use super::{Action, Direction};

/// A failed rule test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestFailure {
    pub rule: String,
    pub file: String,
    /// The case's index in the rule's `[[rule.test]]` list.
    pub case: usize,
    pub direction: Direction,
    pub text: String,
    pub expected: Expect,
    pub expected_output: Option<String>,
    pub got: Expect,
    pub got_output: String,
    /// Set when streaming disagreed with the whole text.
    pub note: Option<String>,
}

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Problems that stop the policy from loading.
    pub errors: Vec<String>,
    /// Problems worth fixing.
    pub warnings: Vec<String>,
}

/// One line of `scan` output.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ScanFinding {
    /// The input line (0-based).
    pub line: usize,
    pub rule: String,
    pub kind: String,
    pub entity: String,
    pub start: usize,
    pub end: usize,
    pub action: String,
}

#[derive(Deserialize)]
struct ScanLine {
    text: String,
}

// === impl TestFailure ===

impl fmt::Display for TestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "FAIL rule `{}` ({}) test #{} on {}:",
            self.rule,
            self.file,
            self.case,
            self.direction.as_str()
        )?;
        writeln!(f, "  text:     {:?}", self.text)?;
        match &self.expected_output {
            Some(o) => writeln!(f, "  expected: {} -> {:?}", expect_str(self.expected), o)?,
            None => writeln!(f, "  expected: {}", expect_str(self.expected))?,
        }
        writeln!(
            f,
            "  got:      {} -> {:?}",
            expect_str(self.got),
            self.got_output
        )?;
        if let Some(n) = &self.note {
            writeln!(f, "  note:     {n}")?;
        }
        Ok(())
    }
}

fn expect_str(e: Expect) -> &'static str {
    match e {
        Expect::Block => "block",
        Expect::Redact => "redact",
        Expect::Flag => "flag",
        Expect::Pass => "pass",
    }
}

/// Runs every rule's test cases.
pub fn run_tests(policy: &Arc<Policy>) -> Vec<TestFailure> {
    // On a copy: the search caches the cases fill (megabytes for a policy of bounded patterns)
    // are freed with it, instead of staying with the thread that loaded the policy, which does
    // not scan again.
    let policy = &Arc::new(Policy::clone(policy));
    let mut failures = Vec::new();
    for (idx, rule) in policy.rules.iter().enumerate() {
        for (case_no, case) in rule.tests.iter().enumerate() {
            let dirs: Vec<Direction> = match case.direction {
                Some(d) => vec![d],
                None => [Direction::Input, Direction::Output]
                    .into_iter()
                    .filter(|d| rule.applies_to(*d))
                    .collect(),
            };
            for dir in dirs {
                if let Some(f) = run_case(policy, idx, rule, case_no, case, dir) {
                    failures.push(f);
                }
            }
        }
    }
    failures
}

fn run_case(
    policy: &Arc<Policy>,
    idx: usize,
    rule: &Rule,
    case_no: usize,
    case: &TestCase,
    dir: Direction,
) -> Option<TestFailure> {
    let fail = |got: Expect, got_output: String, note: Option<String>| TestFailure {
        rule: rule.id.clone(),
        file: rule.file.clone(),
        case: case_no,
        direction: dir,
        text: case.text.clone(),
        expected: case.expect,
        expected_output: case.output.clone(),
        got,
        got_output,
        note,
    };
    if rule.kind == Kind::Limits {
        let got = limits_verdict(rule, case);
        return (got != case.expect).then(|| fail(got, case.text.clone(), None));
    }
    if !rule.applies_to(dir) {
        return Some(fail(
            Expect::Pass,
            String::new(),
            Some(format!("the rule does not apply to {}", dir.as_str())),
        ));
    }
    let mut actions = vec![None; policy.rules.len()];
    actions[idx] = Some(rule.action);
    let (whole, findings) =
        Scanner::scan_text(Arc::clone(policy), dir, actions.clone(), &case.text);
    let got = if whole.blocked {
        Expect::Block
    } else if findings.iter().any(|f| f.action == Action::Redact) {
        Expect::Redact
    } else if findings.is_empty() {
        Expect::Pass
    } else {
        Expect::Flag
    };
    if got != case.expect || case.output.as_ref().is_some_and(|o| *o != whole.release) {
        return Some(fail(got, whole.release, None));
    }
    if dir == Direction::Output {
        let mut s = Scanner::new(Arc::clone(policy), dir, actions);
        let mut streamed = String::new();
        let mut blocked = false;
        for ch in case.text.chars() {
            let mut b = [0u8; 4];
            let p = s.push(ch.encode_utf8(&mut b));
            streamed.push_str(&p.release);
            blocked |= p.blocked;
        }
        let p = s.finish();
        streamed.push_str(&p.release);
        blocked |= p.blocked;
        if streamed != whole.release || blocked != whole.blocked {
            return Some(fail(
                got,
                whole.release,
                Some(format!("streamed one character at a time it released {streamed:?} (blocked: {blocked})")),
            ));
        }
    }
    None
}

fn limits_verdict(rule: &Rule, case: &TestCase) -> Expect {
    let messages: Vec<&str> = case.text.split("\n\n").collect();
    let chars: usize = messages.iter().map(|m| m.chars().count()).sum();
    let l = rule.limits;
    let over = l.max_prompt_chars.is_some_and(|m| chars > m)
        || l.max_prompt_tokens
            .is_some_and(|m| estimate_tokens(chars) > m)
        || l.max_messages.is_some_and(|m| messages.len() > m)
        || l.max_completion_tokens
            .is_some_and(|m| case.max_tokens.is_some_and(|t| t > m));
    match (over, rule.action) {
        (false, _) => Expect::Pass,
        (true, Action::Block) => Expect::Block,
        (true, Action::Redact) => Expect::Redact,
        (true, Action::Flag) => Expect::Flag,
    }
}

/// Validates and lints the policy in `dir`, reporting every problem found.
pub fn check(dir: &Path) -> CheckReport {
    let mut report = CheckReport::default();
    let src = match Sources::read_dir(dir) {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    // Compile each rule on its own, so one broken rule does not hide the next.
    let mut ids = std::collections::BTreeMap::new();
    for (path, file) in &src.files {
        for raw in &file.rule {
            if let Some(prev) = ids.insert(raw.id.clone(), path.display().to_string()) {
                report.errors.push(format!(
                    "{}: rule `{}`: duplicate id (also in {prev})",
                    path.display(),
                    raw.id
                ));
            }
            let single = Sources {
                dir: src.dir.clone(),
                files: vec![(
                    path.clone(),
                    RawFile {
                        rule: vec![raw.clone()],
                    },
                )],
                keyword_files: src.keyword_files.clone(),
                version: src.version.clone(),
            };
            if let Err(e) = compile(&single) {
                report.errors.push(e.to_string());
            }
            for p in raw.pattern.iter().chain(raw.patterns.iter().flatten()) {
                if let Ok(h) = prefix::parse(p) {
                    if prefix::facts(&h).never_matches {
                        report.errors.push(format!(
                            "{}: rule `{}`: `{p}` can never match",
                            path.display(),
                            raw.id
                        ));
                    }
                }
            }
            if raw.scope.as_ref().is_some_and(|s| {
                s.models.iter().any(|m| m.trim().is_empty())
                    || s.keys.iter().any(|k| k.trim().is_empty())
            }) {
                report.errors.push(format!(
                    "{}: rule `{}`: an empty name in `scope` can never match a request",
                    path.display(),
                    raw.id
                ));
            }
            if raw.test.is_empty() {
                report.warnings.push(format!(
                    "{}: rule `{}` has no tests",
                    path.display(),
                    raw.id
                ));
            }
        }
    }
    if report.errors.is_empty() {
        match compile(&src) {
            Ok(policy) => {
                for r in &policy.rules {
                    if r.tests.iter().all(|t| t.expect == Expect::Pass) && !r.tests.is_empty() {
                        report.warnings.push(format!(
                            "{}: rule `{}`: no test shows it matching anything",
                            r.file, r.id
                        ));
                    }
                }
                for f in run_tests(&Arc::new(policy)) {
                    report.errors.push(f.to_string());
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    report
}

/// What a compiled policy weighs, from [`cost`].
#[derive(Debug)]
pub struct CostReport {
    /// Per direction: the occurrence automaton and the hold-back automaton, when there is one.
    pub automata: Vec<(Direction, &'static str, Footprint)>,
    /// One row per distinct pattern, in rule order.
    pub patterns: Vec<PatternCost>,
}

/// One pattern's size: states of its own NFA (what its regex is built from) and of its prefix
/// closure (its part of the hold-back automaton, which only output patterns are in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternCost {
    pub rule: String,
    pub pattern: String,
    pub nfa_states: usize,
    pub closure_states: usize,
}

/// Measures `policy`'s automata. The caches are a copy's, filled by scanning every rule test's
/// text as serving would: whole in both directions, and streamed a word at a time as output
/// (requests are checked whole, so the input engine has no hold-back automaton).
pub fn cost(policy: &Policy) -> CostReport {
    let copy = Arc::new(policy.clone());
    let dirs = [Direction::Input, Direction::Output];
    for dir in dirs {
        let actions = copy.actions_all(dir);
        let texts = copy.rules.iter().flat_map(|r| &r.tests);
        for case in texts.filter(|c| c.direction.is_none_or(|d| d == dir)) {
            let _ = Scanner::scan_text(Arc::clone(&copy), dir, actions.clone(), &case.text);
            if dir == Direction::Input {
                continue;
            }
            let mut stream = Scanner::new(Arc::clone(&copy), dir, actions.clone());
            for word in case.text.split_inclusive(' ') {
                let _ = stream.push(word);
            }
            let _ = stream.finish();
        }
    }
    let mut automata = Vec::new();
    let mut patterns: Vec<PatternCost> = Vec::new();
    for dir in dirs {
        let engine = copy.engine(dir);
        let (set, viable) = engine.footprint();
        automata.extend(set.map(|f| (dir, "occurrence", f)));
        automata.extend(viable.map(|f| (dir, "hold-back", f)));
        for probe in &engine.probes {
            let rule = &copy.rules[probe.rule].id;
            let pattern = &probe.spec.pattern;
            if patterns
                .iter()
                .any(|p| &p.rule == rule && &p.pattern == pattern)
            {
                continue;
            }
            let (nfa_states, closure_states) = prefix::parse(pattern).map_or((0, 0), |hir| {
                (
                    nfa_states(&hir, false),
                    nfa_states(&prefix::closure(&hir), true),
                )
            });
            patterns.push(PatternCost {
                rule: rule.clone(),
                pattern: pattern.clone(),
                nfa_states,
                closure_states,
            });
        }
    }
    patterns.sort_by_key(|p| copy.rule_index(&p.rule));
    CostReport { automata, patterns }
}

impl fmt::Display for CostReport {
    /// Two Markdown tables: the automata, then the patterns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| direction | automaton | NFA states | NFA bytes | cache bytes per scanning thread |"
        )?;
        writeln!(f, "|---|---|---|---|---|")?;
        for (dir, what, fp) in &self.automata {
            writeln!(
                f,
                "| {} | {what} | {} | {} | {} |",
                dir.as_str(),
                fp.nfa_states,
                fp.nfa_bytes,
                fp.cache_bytes
            )?;
        }
        let (bytes, cache) = self.automata.iter().fold((0, 0), |(b, c), (_, _, fp)| {
            (b + fp.nfa_bytes, c + fp.cache_bytes)
        });
        writeln!(f, "| all | | | {bytes} | {cache} |")?;
        writeln!(f)?;
        writeln!(f, "| rule | NFA states | closure states | pattern |")?;
        writeln!(f, "|---|---|---|---|")?;
        for p in &self.patterns {
            let pattern = p.pattern.replace('|', "\\|");
            writeln!(
                f,
                "| {} | {} | {} | `{pattern}` |",
                p.rule, p.nfa_states, p.closure_states
            )?;
        }
        Ok(())
    }
}

/// States of `hir`'s NFA as the engine compiles it (no capture groups); 0 if it does not compile.
fn nfa_states(hir: &regex_syntax::hir::Hir, reverse: bool) -> usize {
    thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .reverse(reverse)
                .which_captures(WhichCaptures::None)
                .nfa_size_limit(None),
        )
        .build_from_hir(hir)
        .map_or(0, |nfa| nfa.states().len())
}

/// Reads JSONL `{"text": …}` lines and writes one JSON line per finding. Every rule applies with
/// its written action (shadow and scope ignored). Returns the number of lines read.
pub fn scan(
    policy: &Arc<Policy>,
    dir: Direction,
    input: impl BufRead,
    mut output: impl Write,
) -> std::io::Result<usize> {
    let actions = policy.actions_all(dir);
    let mut lines = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let parsed: ScanLine = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {}: {e}", i + 1),
            )
        })?;
        let (_, findings) =
            Scanner::scan_text(Arc::clone(policy), dir, actions.clone(), &parsed.text);
        for f in findings {
            let rule = &policy.rules[f.rule];
            let rec = ScanFinding {
                line: i,
                rule: rule.id.clone(),
                kind: rule.kind.as_str().to_string(),
                entity: f.entity.to_string(),
                start: f.start,
                end: f.end,
                action: f.action.as_str().to_string(),
            };
            serde_json::to_writer(&mut output, &rec)?;
            output.write_all(b"\n")?;
        }
    }
    output.flush()?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[rule]]
id = "long-token"
kind = "regex"
pattern = "tok_[a-z0-9]{8,1024}"
action = "block"
direction = "both"
[[rule.test]]
text = "here is tok_abcdefgh1234 for you"
expect = "block"

[[rule]]
id = "short-code"
kind = "regex"
pattern = "code-[0-9]{4}"
action = "flag"
direction = "input"
[[rule.test]]
text = "my code-1234"
expect = "flag"
"#;

    #[test]
    fn cost_names_each_pattern_and_each_automaton_with_its_size() {
        let policy = Policy::from_toml(POLICY).unwrap();
        let report = cost(&policy);
        let rules: Vec<&str> = report.patterns.iter().map(|p| p.rule.as_str()).collect();
        assert_eq!(rules, ["long-token", "short-code"]);
        let (long, short) = (&report.patterns[0], &report.patterns[1]);
        // A bounded repetition costs a state per repetition, in the pattern and its closure.
        assert!(
            long.nfa_states > 1024 && long.closure_states > 1024,
            "{long:?}"
        );
        assert!(
            short.nfa_states < 64 && short.closure_states < 64,
            "{short:?}"
        );
        let kinds: Vec<(Direction, &str)> = report.automata.iter().map(|a| (a.0, a.1)).collect();
        assert_eq!(
            kinds,
            [
                (Direction::Input, "occurrence"),
                (Direction::Output, "occurrence"),
                (Direction::Output, "hold-back"),
            ]
        );
        for (dir, what, f) in &report.automata {
            assert!(f.nfa_states > 0 && f.nfa_bytes > 0, "{dir:?} {what}: {f:?}");
            // The test texts were scanned, so each automaton has a cache on this thread.
            assert!(f.cache_bytes > 0, "{dir:?} {what}: {f:?}");
        }
        // The occurrence automaton widens the long repetition: far smaller than the pattern.
        let input_set = &report.automata[0].2;
        assert!(input_set.nfa_states * 10 < long.nfa_states, "{input_set:?}");
        // The output automata hold only the rule that applies to output.
        assert!(report.automata[1].2.nfa_states < report.automata[0].2.nfa_states);
        let text = report.to_string();
        let row = format!("| input | occurrence | {} |", input_set.nfa_states);
        assert!(text.contains(&row), "{text}");
        assert!(text.contains("| long-token | "), "{text}");
        assert!(text.contains("`code-[0-9]{4}`"), "{text}");
    }
}
