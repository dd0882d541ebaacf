//! `sluice eval compare A B`: what changed between a baseline record and a candidate.
//!
//! Two pass rates side by side say little on a golden set of a few dozen cases: one case is
//! several points, and a rerun of the same model moves them. So the comparison is paired, case by
//! case on the ids both records hold, and tested. Pass/fail goes through the exact McNemar test
//! (only the cases that flipped carry information, and with few of them the binomial is exact
//! where the chi-squared approximation is not); each scorer's mean score difference gets a paired
//! bootstrap interval from a fixed seed, so the same two records always give the same verdict.
//! The candidate is said to have regressed when more cases went pass → fail than fail → pass
//! with p < 0.05, or when a scorer's interval lies wholly below 0; that is exit status 1, for CI.
//! Records of different datasets or suites are compared all the same (a suite's threshold edit
//! should not block a comparison), under a loud warning naming what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::read::{self, CaseView, RecordView, Stored};
use super::stats::{self, Interval, Percentiles};

/// Bootstrap resamples per scorer.
pub const RESAMPLES: usize = 10_000;
/// The bootstrap's seed: fixed, so a comparison is reproducible.
pub const SEED: u64 = 0x05EE_D0F5_A1CE;
/// The significance level of both tests.
pub const ALPHA: f64 = 0.05;
/// Score changes smaller than this are rounding, not change.
const EPSILON: f64 = 1e-9;

/// `sluice eval compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// The baseline: a record file, or a record's hash (or a unique prefix of it) in `--records`.
    pub baseline: String,
    /// The candidate, named the same way.
    pub candidate: String,
    /// Where hashes are looked up.
    #[arg(long, default_value = "records")]
    pub records: PathBuf,
    /// Print the comparison as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
}

/// Everything the comparison found.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub baseline: Side,
    pub candidate: Side,
    /// What makes the two records not comparable (different dataset, suite, format); empty when
    /// they are.
    pub warnings: Vec<String>,
    /// Cases that went pass → fail, or kept their verdict and lost score.
    pub regressed: Vec<CaseChange>,
    /// Cases that went fail → pass, or kept their verdict and gained score.
    pub improved: Vec<CaseChange>,
    pub only_in_baseline: Vec<String>,
    pub only_in_candidate: Vec<String>,
    pub pass_fail: PassFail,
    pub scorers: Vec<ScorerChange>,
    pub latency_ms: LatencyChange,
    pub outputs: OutputChange,
    /// Whether the candidate is significantly worse, and why.
    pub verdict: Verdict,
}

/// One record, as the comparison names it.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub record: String,
    pub suite: String,
    pub model: String,
    pub target: String,
    pub started_at: u64,
    pub cases: usize,
    pub passed: usize,
    pub pass_rate: f64,
    pub pass_rate_ci95: Interval,
}

/// One case whose outcome changed.
#[derive(Debug, Clone, Serialize)]
pub struct CaseChange {
    pub id: String,
    /// `pass_to_fail`, `fail_to_pass`, `score_drop` or `score_rise`.
    pub change: &'static str,
    pub baseline_passed: bool,
    pub candidate_passed: bool,
    /// The scores that moved.
    pub scores: Vec<ScoreMove>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreMove {
    pub scorer: String,
    pub baseline: Option<f64>,
    pub candidate: Option<f64>,
}

/// Paired pass/fail on the cases both records hold.
#[derive(Debug, Clone, Serialize)]
pub struct PassFail {
    pub paired: usize,
    pub both_passed: usize,
    pub both_failed: usize,
    pub pass_to_fail: usize,
    pub fail_to_pass: usize,
    /// Exact McNemar (two-sided binomial on the discordant pairs).
    pub p_value: f64,
    pub significant_regression: bool,
}

/// One scorer's change, paired on the cases it scored in both records.
#[derive(Debug, Clone, Serialize)]
pub struct ScorerChange {
    pub scorer: String,
    pub baseline_mean: Option<f64>,
    pub candidate_mean: Option<f64>,
    pub paired: usize,
    /// Mean of candidate − baseline over the paired cases.
    pub mean_difference: Option<f64>,
    /// 95 % paired-bootstrap interval of `mean_difference`.
    pub ci95: Option<Interval>,
    pub significant_regression: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyChange {
    pub baseline: Option<Percentiles>,
    pub candidate: Option<Percentiles>,
    pub p50_change: Option<f64>,
    pub p95_change: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputChange {
    pub baseline_mean_length_chars: f64,
    pub candidate_mean_length_chars: f64,
    /// Each length bucket's counts (`le` inclusive, `null` the open last bucket).
    pub length_chars: Vec<BucketChange>,
    pub finish_reasons: BTreeMap<String, [usize; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BucketChange {
    pub le: Option<usize>,
    pub baseline: usize,
    pub candidate: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub regressed: bool,
    pub reasons: Vec<String>,
}

// === impl Comparison ===

impl Comparison {
    /// Compares `candidate` against `baseline`; `names` are how the two are called in the output.
    pub fn of(baseline: &RecordView, candidate: &RecordView, names: [&str; 2]) -> Comparison {
        let warnings = warnings(baseline, candidate);
        let by_id = |r: &RecordView| -> BTreeMap<String, CaseView> {
            r.cases.iter().map(|c| (c.id.clone(), c.clone())).collect()
        };
        let (a, b) = (by_id(baseline), by_id(candidate));
        let ids_in = |r: &RecordView, other: &BTreeMap<String, CaseView>| -> Vec<String> {
            r.cases
                .iter()
                .filter(|c| !other.contains_key(&c.id))
                .map(|c| c.id.clone())
                .collect()
        };
        // Paired, in the baseline's order.
        let pairs: Vec<(&CaseView, &CaseView)> = baseline
            .cases
            .iter()
            .filter_map(|c| b.get(&c.id).map(|d| (c, d)))
            .collect();

        let mut regressed = Vec::new();
        let mut improved = Vec::new();
        for (x, y) in &pairs {
            let moves = score_moves(x, y);
            let dropped = moves
                .iter()
                .any(|m| m.candidate.unwrap_or(0.0) < m.baseline.unwrap_or(0.0) - EPSILON);
            let change = |change| CaseChange {
                id: x.id.clone(),
                change,
                baseline_passed: x.passed,
                candidate_passed: y.passed,
                scores: moves.clone(),
            };
            match (x.passed, y.passed) {
                (true, false) => regressed.push(change("pass_to_fail")),
                (false, true) => improved.push(change("fail_to_pass")),
                _ if dropped => regressed.push(change("score_drop")),
                _ if !moves.is_empty() => improved.push(change("score_rise")),
                _ => {}
            }
        }

        let count =
            |f: fn(bool, bool) -> bool| pairs.iter().filter(|(x, y)| f(x.passed, y.passed)).count();
        let pass_to_fail = count(|x, y| x && !y);
        let fail_to_pass = count(|x, y| !x && y);
        let p_value = stats::mcnemar_exact(pass_to_fail, fail_to_pass);
        let pass_fail = PassFail {
            paired: pairs.len(),
            both_passed: count(|x, y| x && y),
            both_failed: count(|x, y| !x && !y),
            pass_to_fail,
            fail_to_pass,
            p_value,
            significant_regression: p_value < ALPHA && pass_to_fail > fail_to_pass,
        };

        let scorers = scorer_changes(baseline, candidate, &pairs);
        let latency_ms = {
            let (l, m) = (baseline.summary.latency_ms, candidate.summary.latency_ms);
            let change = |f: fn(&Percentiles) -> f64| Some(f(m.as_ref()?) - f(l.as_ref()?));
            LatencyChange {
                baseline: l,
                candidate: m,
                p50_change: change(|p| p.p50),
                p95_change: change(|p| p.p95),
            }
        };
        let outputs = output_change(baseline, candidate);

        let mut reasons = Vec::new();
        if pass_fail.significant_regression {
            reasons.push(format!(
                "{pass_to_fail} cases went pass → fail and {fail_to_pass} fail → pass: \
                 McNemar p = {}",
                p(p_value)
            ));
        }
        for s in scorers.iter().filter(|s| s.significant_regression) {
            if let (Some(d), Some(ci)) = (s.mean_difference, s.ci95) {
                reasons.push(format!(
                    "{}: mean score {d:+.3}, 95 % CI {:+.3} … {:+.3}, wholly below 0",
                    s.scorer, ci.low, ci.high
                ));
            }
        }
        Comparison {
            baseline: side(baseline, names[0]),
            candidate: side(candidate, names[1]),
            warnings,
            regressed,
            improved,
            only_in_baseline: ids_in(baseline, &b),
            only_in_candidate: ids_in(candidate, &a),
            pass_fail,
            scorers,
            latency_ms,
            outputs,
            verdict: Verdict {
                regressed: !reasons.is_empty(),
                reasons,
            },
        }
    }

    /// The comparison as printed for a person.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        for (label, s) in [
            ("baseline ", &self.baseline),
            ("candidate", &self.candidate),
        ] {
            line(format!(
                "{label}: {} ({}, model {}, {})",
                s.record, s.suite, s.model, s.target
            ));
        }
        for w in &self.warnings {
            line(format!("WARNING: not comparable: {w}"));
        }
        line(String::new());
        let list = |title: &str, changes: &[CaseChange], line: &mut dyn FnMut(String)| {
            if changes.is_empty() {
                return;
            }
            line(format!("{title} ({}):", changes.len()));
            for c in changes {
                let scores: Vec<String> = c
                    .scores
                    .iter()
                    .map(|m| format!("{} {} → {}", m.scorer, opt(m.baseline), opt(m.candidate)))
                    .collect();
                line(format!(
                    "  {:<12} {}{}",
                    c.change.replace('_', " "),
                    c.id,
                    if scores.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", scores.join(", "))
                    }
                ));
            }
        };
        list("regressed", &self.regressed, &mut line);
        list("improved", &self.improved, &mut line);
        if !self.only_in_baseline.is_empty() {
            line(format!(
                "only in the baseline ({}): {}",
                self.only_in_baseline.len(),
                self.only_in_baseline.join(", ")
            ));
        }
        if !self.only_in_candidate.is_empty() {
            line(format!(
                "only in the candidate ({}): {}",
                self.only_in_candidate.len(),
                self.only_in_candidate.join(", ")
            ));
        }
        if self.regressed.is_empty() && self.improved.is_empty() {
            line("no case changed".into());
        }
        line(String::new());
        for (label, s) in [
            ("baseline ", &self.baseline),
            ("candidate", &self.candidate),
        ] {
            line(format!(
                "pass rate {label}: {}/{} = {:.1} % (95 % CI {:.1}-{:.1} %)",
                s.passed,
                s.cases,
                s.pass_rate * 100.0,
                s.pass_rate_ci95.low * 100.0,
                s.pass_rate_ci95.high * 100.0
            ));
        }
        let pf = &self.pass_fail;
        line(format!(
            "paired cases: {} ({} both passed, {} both failed, {} pass → fail, {} fail → pass); \
             McNemar exact p = {}",
            pf.paired,
            pf.both_passed,
            pf.both_failed,
            pf.pass_to_fail,
            pf.fail_to_pass,
            p(pf.p_value)
        ));
        for s in &self.scorers {
            let diff = match (s.mean_difference, s.ci95) {
                (Some(d), Some(ci)) => format!(
                    "{d:+.3} (95 % CI {:+.3} … {:+.3}, {} paired){}",
                    ci.low,
                    ci.high,
                    s.paired,
                    if s.significant_regression {
                        "  REGRESSED"
                    } else {
                        ""
                    }
                ),
                _ => "no paired cases".into(),
            };
            line(format!(
                "score {}: {} → {}: {diff}",
                s.scorer,
                opt(s.baseline_mean),
                opt(s.candidate_mean)
            ));
        }
        let l = &self.latency_ms;
        match (l.baseline, l.candidate) {
            (Some(a), Some(b)) => line(format!(
                "latency p50 {:.1} → {:.1} ms ({}), p95 {:.1} → {:.1} ms ({})",
                a.p50,
                b.p50,
                relative(a.p50, b.p50),
                a.p95,
                b.p95,
                relative(a.p95, b.p95)
            )),
            _ => line("latency: not measured in both records".into()),
        }
        let o = &self.outputs;
        line(format!(
            "output length: mean {:.1} → {:.1} characters; buckets {}",
            o.baseline_mean_length_chars,
            o.candidate_mean_length_chars,
            o.length_chars
                .iter()
                .filter(|b| b.baseline + b.candidate > 0)
                .map(|b| format!("{} {} → {}", bucket_label(b.le), b.baseline, b.candidate))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        line(format!(
            "finish reasons: {}",
            o.finish_reasons
                .iter()
                .map(|(r, [a, b])| format!("{r} {a} → {b}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        line(String::new());
        if self.verdict.regressed {
            line("REGRESSED: the candidate is significantly worse".into());
            for r in &self.verdict.reasons {
                line(format!("  {r}"));
            }
        } else {
            line("not significantly worse".into());
        }
        out
    }
}

fn side(r: &RecordView, name: &str) -> Side {
    let n = r.summary.passed + r.summary.failed;
    Side {
        record: name.to_owned(),
        suite: r.suite.name.clone(),
        model: r.model.clone(),
        target: r.target.clone(),
        started_at: r.started_at,
        cases: n,
        passed: r.summary.passed,
        pass_rate: r.summary.pass_rate,
        pass_rate_ci95: r.pass_rate_ci95(),
    }
}

/// What makes the two records measure different things.
fn warnings(a: &RecordView, b: &RecordView) -> Vec<String> {
    let mut w = Vec::new();
    if a.dataset.sha256 != b.dataset.sha256 {
        w.push(format!(
            "the datasets differ (dataset.sha256 {} in the baseline, {} in the candidate)",
            short(&a.dataset.sha256),
            short(&b.dataset.sha256)
        ));
    }
    if a.suite.sha256 != b.suite.sha256 {
        w.push(format!(
            "the suites differ (suite.sha256 {} in the baseline, {} in the candidate)",
            short(&a.suite.sha256),
            short(&b.suite.sha256)
        ));
    }
    if a.format != b.format {
        w.push(format!(
            "the record formats differ ({} and {})",
            a.format, b.format
        ));
    }
    w
}

/// The scores of a paired case that moved, by scorer, in the baseline's order then the
/// candidate's new ones.
fn score_moves(x: &CaseView, y: &CaseView) -> Vec<ScoreMove> {
    let score =
        |c: &CaseView, name: &str| c.scores.iter().find(|s| s.scorer == name).map(|s| s.score);
    let mut names: Vec<&str> = x.scores.iter().map(|s| s.scorer.as_str()).collect();
    for s in &y.scores {
        if !names.contains(&s.scorer.as_str()) {
            names.push(&s.scorer);
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let (a, b) = (score(x, name), score(y, name));
            let moved = match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() > EPSILON,
                _ => true,
            };
            moved.then(|| ScoreMove {
                scorer: name.to_owned(),
                baseline: a,
                candidate: b,
            })
        })
        .collect()
}

fn scorer_changes(
    a: &RecordView,
    b: &RecordView,
    pairs: &[(&CaseView, &CaseView)],
) -> Vec<ScorerChange> {
    let names: BTreeSet<&String> = a
        .summary
        .mean_scores
        .keys()
        .chain(b.summary.mean_scores.keys())
        .collect();
    names
        .into_iter()
        .map(|name| {
            let score = |c: &CaseView| c.scores.iter().find(|s| &s.scorer == name).map(|s| s.score);
            let diffs: Vec<f64> = pairs
                .iter()
                .filter_map(|(x, y)| Some(score(y)? - score(x)?))
                .collect();
            let boot = stats::bootstrap_mean(&diffs, RESAMPLES, SEED);
            ScorerChange {
                scorer: name.clone(),
                baseline_mean: a.summary.mean_scores.get(name).copied(),
                candidate_mean: b.summary.mean_scores.get(name).copied(),
                paired: diffs.len(),
                mean_difference: boot.map(|(m, _)| m),
                ci95: boot.map(|(_, ci)| ci),
                significant_regression: boot.is_some_and(|(_, ci)| ci.high < -EPSILON),
            }
        })
        .collect()
}

fn output_change(a: &RecordView, b: &RecordView) -> OutputChange {
    let (oa, ob) = (&a.summary.outputs, &b.summary.outputs);
    let mut les: Vec<Option<usize>> = Vec::new();
    for bucket in oa.length_chars.iter().chain(&ob.length_chars) {
        if !les.contains(&bucket.le) {
            les.push(bucket.le);
        }
    }
    // Ascending, the open bucket last.
    les.sort_by_key(|le| le.unwrap_or(usize::MAX));
    let count = |o: &super::read::OutputsView, le| {
        o.length_chars
            .iter()
            .find(|b| b.le == le)
            .map_or(0, |b| b.count)
    };
    let mut finish_reasons = BTreeMap::new();
    for (r, n) in &oa.finish_reasons {
        finish_reasons.entry(r.clone()).or_insert([0, 0])[0] = *n;
    }
    for (r, n) in &ob.finish_reasons {
        finish_reasons.entry(r.clone()).or_insert([0, 0])[1] = *n;
    }
    OutputChange {
        baseline_mean_length_chars: oa.mean_length_chars,
        candidate_mean_length_chars: ob.mean_length_chars,
        length_chars: les
            .into_iter()
            .map(|le| BucketChange {
                le,
                baseline: count(oa, le),
                candidate: count(ob, le),
            })
            .collect(),
        finish_reasons,
    }
}

/// A length bucket's name: `≤64`, or `>16384` for the open one.
pub fn bucket_label(le: Option<usize>) -> String {
    match le {
        Some(le) => format!("≤{le}"),
        None => format!(
            ">{}",
            stats::LENGTH_BUCKETS[stats::LENGTH_BUCKETS.len() - 1]
        ),
    }
}

fn short(hash: &str) -> &str {
    if hash.is_empty() {
        "(none)"
    } else {
        &hash[..hash.len().min(12)]
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.3}"))
}

fn p(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.2e}")
    } else {
        format!("{p:.4}")
    }
}

fn relative(a: f64, b: f64) -> String {
    if a > 0.0 {
        format!("{:+.1} %", (b - a) / a * 100.0)
    } else {
        format!("{:+.1} ms", b - a)
    }
}

// === the command ===

/// Runs `sluice eval compare`: exit 0 when the candidate is not significantly worse, 1 when it
/// is, 2 when a record cannot be found or read.
pub fn main(args: CompareArgs) -> ExitCode {
    let load = |arg: &str| read::load(arg, &args.records);
    let (a, b): (Stored, Stored) = match (load(&args.baseline), load(&args.candidate)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let name = |s: &Stored| s.path.display().to_string();
    let comparison = Comparison::of(&a.record, &b.record, [&name(&a), &name(&b)]);
    if args.json {
        match serde_json::to_string_pretty(&comparison) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
        for w in &comparison.warnings {
            eprintln!("WARNING: not comparable: {w}");
        }
    } else {
        print!("{}", comparison.text());
    }
    if comparison.verdict.regressed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record of `cases` (id, passed, score of scorer `s`), every case 10 ms and 5 characters.
    pub(crate) fn record(cases: &[(&str, bool, f64)]) -> RecordView {
        let cases_json: Vec<serde_json::Value> = cases
            .iter()
            .map(|(id, passed, score)| {
                serde_json::json!({
                    "id": id, "passed": passed, "output": "hello", "finish_reason": "stop",
                    "status": 200, "latency_ms": 10.0,
                    "scores": [{"scorer": "s", "score": score, "passed": passed}]
                })
            })
            .collect();
        let passed = cases.iter().filter(|c| c.1).count();
        let mean = stats::mean(&cases.iter().map(|c| c.2).collect::<Vec<_>>());
        read::parse(
            serde_json::json!({
                "format": 1,
                "suite": {"name": "t", "file": "t.toml", "sha256": "aaaa"},
                "dataset": {"file": "t.jsonl", "sha256": "bbbb", "cases": cases.len()},
                "model": "m", "target": "in-process:x",
                "summary": {
                    "passed": passed, "failed": cases.len() - passed,
                    "pass_rate": passed as f64 / cases.len().max(1) as f64,
                    "mean_scores": {"s": mean},
                    "latency_ms": {"p50": 10.0, "p95": 10.0, "p99": 10.0, "max": 10.0},
                    "outputs": {"length_chars": [{"le": 16, "count": cases.len()}, {"le": null, "count": 0}],
                                "mean_length_chars": 5.0, "finish_reasons": {"stop": cases.len()}}
                },
                "cases": cases_json
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn ids(changes: &[CaseChange]) -> Vec<&str> {
        changes.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn ten_cases_lost_is_a_significant_regression() {
        let names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
        let a: Vec<(&str, bool, f64)> = names.iter().map(|n| (n.as_str(), true, 1.0)).collect();
        let mut b = a.clone();
        for case in b.iter_mut().take(10) {
            *case = (case.0, false, 0.0);
        }
        let c = Comparison::of(&record(&a), &record(&b), ["a", "b"]);
        assert_eq!(c.pass_fail.pass_to_fail, 10);
        assert_eq!(c.pass_fail.both_passed, 2);
        assert!((c.pass_fail.p_value - 2.0 / 1024.0).abs() < 1e-12);
        assert!(c.pass_fail.significant_regression);
        assert_eq!(ids(&c.regressed), &names[..10]);
        assert!(c.regressed.iter().all(|r| r.change == "pass_to_fail"));
        let s = &c.scorers[0];
        assert_eq!(s.paired, 12);
        assert!((s.mean_difference.unwrap() + 10.0 / 12.0).abs() < 1e-12);
        assert!(s.ci95.unwrap().high < 0.0 && s.significant_regression);
        assert!(c.verdict.regressed && c.verdict.reasons.len() == 2);
        assert!(c.warnings.is_empty());
        let text = c.text();
        assert!(text.contains("pass to fail c0"), "{text}");
        assert!(text.contains("p = 0.0020"), "{text}");
        assert!(text.contains("REGRESSED"), "{text}");

        // The other way round it is an improvement, and no regression.
        let c = Comparison::of(&record(&b), &record(&a), ["b", "a"]);
        assert_eq!(c.improved.len(), 10);
        assert!(c.regressed.is_empty());
        assert!(!c.verdict.regressed);
        assert!(!c.pass_fail.significant_regression && c.pass_fail.p_value < 0.05);
    }

    #[test]
    fn an_identical_rerun_is_no_change() {
        let cases = [("a", true, 1.0), ("b", false, 0.2), ("c", true, 0.9)];
        let c = Comparison::of(&record(&cases), &record(&cases), ["x", "y"]);
        assert!(c.regressed.is_empty() && c.improved.is_empty());
        assert_eq!(c.pass_fail.p_value, 1.0);
        assert_eq!(c.scorers[0].mean_difference, Some(0.0));
        assert!(!c.verdict.regressed);
        assert!(c.text().contains("no case changed"));
        assert_eq!(c.latency_ms.p50_change, Some(0.0));
    }

    #[test]
    fn few_flips_are_reported_but_not_significant() {
        let a = [
            ("a", true, 1.0),
            ("b", true, 1.0),
            ("c", false, 0.0),
            ("d", true, 0.8),
        ];
        let b = [
            ("a", false, 0.0),
            ("b", true, 1.0),
            ("c", true, 1.0),
            ("d", true, 0.6),
        ];
        let c = Comparison::of(&record(&a), &record(&b), ["x", "y"]);
        assert_eq!(ids(&c.regressed), ["a", "d"]);
        assert_eq!(c.regressed[1].change, "score_drop");
        assert_eq!(c.regressed[1].scores[0].candidate, Some(0.6));
        assert_eq!(ids(&c.improved), ["c"]);
        assert_eq!(c.pass_fail.p_value, 1.0);
        assert!(!c.verdict.regressed, "{:?}", c.verdict);
    }

    #[test]
    fn cases_in_one_record_and_different_datasets_are_named() {
        let a = record(&[("a", true, 1.0), ("gone", true, 1.0)]);
        let mut b = record(&[("a", true, 1.0), ("new", false, 0.0)]);
        b.dataset.sha256 = "cccc".into();
        let c = Comparison::of(&a, &b, ["x", "y"]);
        assert_eq!(c.only_in_baseline, ["gone"]);
        assert_eq!(c.only_in_candidate, ["new"]);
        assert_eq!(c.pass_fail.paired, 1);
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].contains("dataset.sha256 bbbb"),
            "{:?}",
            c.warnings
        );
        let text = c.text();
        assert!(
            text.contains("WARNING: not comparable: the datasets differ"),
            "{text}"
        );
        assert!(text.contains("only in the baseline (1): gone"), "{text}");
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["only_in_candidate"][0], "new");
        assert_eq!(
            json["outputs"]["finish_reasons"]["stop"],
            serde_json::json!([2, 2])
        );
    }

    #[test]
    fn a_steady_score_drop_alone_is_a_regression() {
        // Every case still passes, but every score fell: McNemar sees nothing, the bootstrap does.
        let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
        let a: Vec<_> = names.iter().map(|n| (n.as_str(), true, 0.9)).collect();
        let b: Vec<_> = names.iter().map(|n| (n.as_str(), true, 0.7)).collect();
        let c = Comparison::of(&record(&a), &record(&b), ["x", "y"]);
        assert_eq!(c.pass_fail.p_value, 1.0);
        assert_eq!(c.regressed.len(), 8);
        assert!(c.scorers[0].significant_regression);
        assert!(c.verdict.regressed);
    }
}
