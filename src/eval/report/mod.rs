//! `sluice eval report RECORD`: a record rendered for people, as Markdown and as one HTML page.
//!
//! A record is JSON for machines; the people who decide a release read a page. The Markdown goes
//! into a pull request or a wiki, the HTML page is one self-contained file (inline CSS, inline
//! SVG charts, no script, no external asset) that opens offline, from a CI artefact or an
//! attachment. Every string in a record may be model output, which can hold markup and
//! `<script>`, so every one is escaped on the way out ([`escape`], and the Markdown's own
//! escaping), and the page also forbids scripts with a Content-Security-Policy as a second line.

use std::path::PathBuf;
use std::process::ExitCode;

use super::compare::Comparison;
use super::read::{self, RecordView};

pub mod html;
pub mod markdown;
pub mod svg;

/// Characters of an output shown in the case table before it is cut (the full text follows in
/// a `<details>` in HTML).
pub const OUTPUT_SHOWN: usize = 240;

/// `sluice eval report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// The record: a file, or a record's hash (or a unique prefix of it) in `--records`.
    pub record: String,
    /// Where hashes are looked up.
    #[arg(long, default_value = "records")]
    pub records: PathBuf,
    /// The directory the report is written to, as `<record hash>.md` and `<record hash>.html`.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Which files to write.
    #[arg(long, value_enum, default_value_t = Format::Both)]
    pub format: Format,
    /// A baseline record (named as RECORD is): the report adds what changed against it, as
    /// `eval compare BASELINE RECORD` finds it.
    #[arg(long)]
    pub baseline: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Html,
    Both,
}

/// Runs `sluice eval report`: prints the paths written; exit 0 (a report is not a gate, even
/// against a baseline it regressed from), or 2 when a record cannot be read or a file cannot be
/// written.
pub fn main(args: ReportArgs) -> ExitCode {
    let stored = match read::load(&args.record, &args.records) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let against = match &args.baseline {
        None => None,
        Some(arg) => match read::load(arg, &args.records) {
            Ok(base) => Some(Comparison::of(
                &base.record,
                &stored.record,
                [
                    &base.path.display().to_string(),
                    &stored.path.display().to_string(),
                ],
            )),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let name = if stored.hash.is_empty() {
        "report".to_owned()
    } else {
        stored.hash.clone()
    };
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    if args.format != Format::Html {
        files.push((
            args.out.join(format!("{name}.md")),
            markdown::render(&stored.record, &name, against.as_ref()),
        ));
    }
    if args.format != Format::Md {
        files.push((
            args.out.join(format!("{name}.html")),
            html::render(&stored.record, &name, against.as_ref()),
        ));
    }
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: cannot create {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    for (path, text) in files {
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}

/// Escapes text for HTML and SVG, in element content and in quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The first `n` characters of `s`, and whether it was cut.
pub fn truncate(s: &str, n: usize) -> (String, bool) {
    match s.char_indices().nth(n) {
        Some((i, _)) => (format!("{}…", &s[..i]), true),
        None => (s.to_owned(), false),
    }
}

/// Unix seconds as an RFC 3339 UTC time.
pub fn when(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A duration in milliseconds, briefly.
pub fn duration(ms: f64) -> String {
    if ms >= 60_000.0 {
        format!(
            "{:.0} min {:.0} s",
            (ms / 60_000.0).floor(),
            (ms % 60_000.0) / 1000.0
        )
    } else if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

pub fn percent(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

/// The answered cases' `(id, latency, passed)`, for the latency chart.
pub fn latencies(r: &RecordView) -> Vec<(String, f64, bool)> {
    r.cases
        .iter()
        .filter(|c| c.status.is_some())
        .map(|c| (c.id.clone(), c.latency_ms, c.passed))
        .collect()
}

/// The length histogram with its buckets named.
pub fn length_buckets(r: &RecordView) -> Vec<(String, usize)> {
    r.summary
        .outputs
        .length_chars
        .iter()
        .map(|b| (super::compare::bucket_label(b.le), b.count))
        .collect()
}

/// Why a failed case failed: the error, else its first failing score's detail.
pub fn failure(c: &read::CaseView) -> Option<String> {
    if c.passed {
        return None;
    }
    if let Some(e) = &c.error {
        return Some(e.clone());
    }
    c.scores
        .iter()
        .find(|s| !s.passed)
        .map(|s| format!("{}: {}", s.scorer, s.detail.as_deref().unwrap_or("failed")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record with a planted script in an output, a tag and an id, and a long output.
    pub(crate) fn planted() -> RecordView {
        let long = "word ".repeat(200);
        read::parse(
            serde_json::json!({
                "format": 1,
                "suite": {"name": "s<i>", "file": "evals/s.toml", "sha256": "ab12"},
                "dataset": {"file": "evals/s.jsonl", "sha256": "cd34", "cases": 3},
                "model": "m\"x", "target": "in-process:config/mock.toml",
                "request": {"temperature": 0.0},
                "sluice_version": "0.1.0", "started_at": 1_796_680_000u64, "duration_ms": 5210.4,
                "summary": {
                    "passed": 2, "failed": 1, "pass_rate": 0.6667,
                    "pass_rate_ci95": {"low": 0.2077, "high": 0.939},
                    "threshold": 0.5, "threshold_met": true,
                    "mean_scores": {"contains": 0.6667, "<svg onload=x>": 1.0},
                    "latency_ms": {"p50": 12.0, "p95": 40.0, "p99": 40.0, "max": 40.0},
                    "tokens": {"prompt": 10, "completion": 5, "total": 15},
                    "errors": 0,
                    "outputs": {"length_chars": [{"le": 0, "count": 0}, {"le": 16, "count": 1},
                                                 {"le": 64, "count": 1}, {"le": null, "count": 1}],
                                "mean_length_chars": 340.0,
                                "finish_reasons": {"stop": 2, "length": 1},
                                "guardrail": {"blocked_input": 0, "blocked_output": 0}}
                },
                "cases": [
                    {"id": "plain", "tags": ["geo"], "passed": true, "output": "Paris.",
                     "finish_reason": "stop", "status": 200, "latency_ms": 12.0,
                     "scores": [{"scorer": "contains", "score": 1.0, "passed": true}]},
                    {"id": "<img src=x>", "tags": ["<b>t</b>"], "passed": false,
                     "output": "<script>alert('x')</script> | *not* bold",
                     "finish_reason": "stop", "status": 200, "latency_ms": 40.0,
                     "scores": [{"scorer": "contains", "score": 0.0, "passed": false,
                                 "detail": "none of <\"Paris\"> found"}]},
                    {"id": "long", "passed": true, "output": long, "finish_reason": "length",
                     "status": 200, "latency_ms": 20.0,
                     "scores": [{"scorer": "contains", "score": 1.0, "passed": true}]}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn helpers() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(truncate("héllo", 2), ("hé…".into(), true));
        assert_eq!(truncate("hé", 2), ("hé".into(), false));
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
        assert_eq!(duration(5210.4), "5.2 s");
        assert_eq!(duration(12.0), "12 ms");
        assert_eq!(duration(125_000.0), "2 min 5 s");
        let r = planted();
        assert_eq!(latencies(&r).len(), 3);
        assert_eq!(length_buckets(&r)[3].0, ">16384");
        assert!(failure(&r.cases[1]).unwrap().contains("none of"));
        assert!(failure(&r.cases[0]).is_none());
    }
}
