//! Tools for policy authors: `test`, `check` and `scan`.
//!
//! A rule is only as good as the cases it was tried on, so rules carry their own test cases and
//! the gateway refuses to load (or reload) a policy whose tests fail. Each case runs the rule
//! alone, with its written action (shadow and scope ignored), on input and on output; an output
//! case is also streamed one character at a time and must give the same answer as the whole text.
//! `check` reports every problem in a policy rather than the first, and `scan` runs a policy over
//! a JSONL corpus so its precision can be measured.

use std::fmt;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::compile::{compile, Expect, Kind, Policy, Rule, TestCase};
use super::handle::estimate_tokens;
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
