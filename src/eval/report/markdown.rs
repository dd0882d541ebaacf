//! The Markdown report: the record's header, summary, scores, latency, output shape and every
//! case, as GitHub-flavoured Markdown tables for a pull request or a wiki page.
//!
//! Markdown renderers pass raw HTML through, so record text is escaped twice over: HTML's
//! special characters become entities and Markdown's become backslash escapes, and a table cell
//! keeps to one line.

use std::fmt::Write;

use super::{failure, length_buckets, percent, truncate, when, OUTPUT_SHOWN};
use crate::eval::compare::Comparison;
use crate::eval::read::RecordView;

/// Renders `r`; `name` is the record's hash; `against`, what changed from a baseline.
pub fn render(r: &RecordView, name: &str, against: Option<&Comparison>) -> String {
    let s = &r.summary;
    let ci = r.pass_rate_ci95();
    let mut out = String::new();
    let _ = writeln!(out, "# Eval report: {}\n", md(&r.suite.name));
    out.push_str("| | |\n| --- | --- |\n");
    let rows = [
        (
            "Suite",
            format!("{} (`{}`)", md(&r.suite.name), code(&r.suite.file)),
        ),
        ("Model", md(&r.model)),
        ("Target", md(&r.target)),
        (
            "Versions",
            format!(
                "Sluice {}, record format {}",
                md(&r.sluice_version),
                r.format
            ),
        ),
        (
            "Dataset",
            format!(
                "`{}`, {} cases, sha256 `{}`",
                code(&r.dataset.file),
                r.dataset.cases,
                code(&r.dataset.sha256)
            ),
        ),
        ("Suite sha256", format!("`{}`", code(&r.suite.sha256))),
        ("Started", when(r.started_at)),
        ("Duration", super::duration(r.duration_ms)),
        ("Record", format!("`{}`", code(name))),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {v} |");
    }

    let n = s.passed + s.failed;
    let _ = write!(
        out,
        "\n## Summary\n\n**Pass rate {}** ({}/{n}, 95 % CI {} – {}); threshold {}: **{}**.\n\n",
        percent(s.pass_rate),
        s.passed,
        percent(ci.low),
        percent(ci.high),
        percent(s.threshold),
        if s.threshold_met { "met" } else { "NOT met" }
    );
    let _ = writeln!(
        out,
        "Errors (no answer): {}. Tokens: {} prompt, {} completion. Guardrail blocks: {} input, {} output.",
        s.errors,
        s.tokens.prompt,
        s.tokens.completion,
        s.outputs.guardrail.blocked_input,
        s.outputs.guardrail.blocked_output
    );

    if let Some(c) = against {
        comparison(&mut out, c);
    }

    out.push_str("\n## Scores\n\n| scorer | mean | |\n| --- | ---: | --- |\n");
    for (name, mean) in &s.mean_scores {
        let filled = (mean.clamp(0.0, 1.0) * 20.0).round() as usize;
        let _ = writeln!(
            out,
            "| {} | {mean:.3} | `{}{}` |",
            md(name),
            "█".repeat(filled),
            "░".repeat(20 - filled)
        );
    }

    out.push_str("\n## Latency\n\n");
    match s.latency_ms {
        Some(p) => {
            let _ = writeln!(
                out,
                "| p50 | p95 | p99 | max |\n| ---: | ---: | ---: | ---: |\n| {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
                p.p50, p.p95, p.p99, p.max
            );
        }
        None => out.push_str("No case got an answer.\n"),
    }

    let _ = write!(
        out,
        "\n## Outputs\n\nMean length {:.1} characters.\n\n| length (characters) | answers |\n| --- | ---: |\n",
        s.outputs.mean_length_chars
    );
    for (label, count) in length_buckets(r) {
        let _ = writeln!(out, "| {label} | {count} |");
    }
    out.push_str("\n| finish reason | answers |\n| --- | ---: |\n");
    for (reason, count) in &s.outputs.finish_reasons {
        let _ = writeln!(out, "| {} | {count} |", md(reason));
    }

    out.push_str(
        "\n## Cases\n\n| id | tags | result | scores | latency | output |\n| --- | --- | --- | --- | ---: | --- |\n",
    );
    for c in &r.cases {
        let scores: Vec<String> = c
            .scores
            .iter()
            .map(|x| {
                format!(
                    "{} {:.2}{}",
                    md(&x.scorer),
                    x.score,
                    if x.passed { "" } else { " ✗" }
                )
            })
            .collect();
        let (shown, _) = truncate(&c.output, OUTPUT_SHOWN);
        let result = match failure(c) {
            None => "✅ pass".to_owned(),
            Some(why) => format!("❌ fail: {}", md(&truncate(&why, 120).0)),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {result} | {} | {:.1} ms | {} |",
            md(&c.id),
            md(&c.tags.join(", ")),
            scores.join("<br>"),
            c.latency_ms,
            md(&shown)
        );
    }
    out
}

/// The section "Against the baseline".
fn comparison(out: &mut String, c: &Comparison) {
    let b = &c.baseline;
    let _ = write!(
        out,
        "\n## Against the baseline\n\nBaseline `{}` (model {}, {}): **{}**.\n\n",
        code(&b.record),
        md(&b.model),
        md(&b.target),
        if c.verdict.regressed {
            "regressed significantly"
        } else {
            "not significantly worse"
        }
    );
    for w in &c.warnings {
        let _ = writeln!(out, "> **Warning: not comparable:** {}\n", md(w));
    }
    for r in &c.verdict.reasons {
        let _ = writeln!(out, "- {}", md(r));
    }
    let pf = &c.pass_fail;
    let _ = write!(
        out,
        "\nPass rate {} → {}; {} paired cases, {} pass → fail, {} fail → pass, McNemar exact p = {:.4}.\n\n",
        percent(b.pass_rate),
        percent(c.candidate.pass_rate),
        pf.paired,
        pf.pass_to_fail,
        pf.fail_to_pass,
        pf.p_value
    );
    out.push_str("| scorer | baseline | this record | difference | 95 % CI |\n| --- | ---: | ---: | ---: | --- |\n");
    let f = |x: Option<f64>| x.map_or_else(|| "–".to_owned(), |x| format!("{x:.3}"));
    for s in &c.scorers {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            md(&s.scorer),
            f(s.baseline_mean),
            f(s.candidate_mean),
            s.mean_difference
                .map_or_else(|| "–".to_owned(), |d| format!("{d:+.3}")),
            s.ci95.map_or_else(
                || "–".to_owned(),
                |ci| format!("{:+.3} … {:+.3}", ci.low, ci.high)
            )
        );
    }
    let ids = |title: &str, ids: Vec<&str>, out: &mut String| {
        if !ids.is_empty() {
            let ids: Vec<String> = ids.into_iter().map(md).collect();
            let _ = writeln!(out, "\n{title} ({}): {}", ids.len(), ids.join(", "));
        }
    };
    ids(
        "Regressed",
        c.regressed.iter().map(|x| x.id.as_str()).collect(),
        out,
    );
    ids(
        "Improved",
        c.improved.iter().map(|x| x.id.as_str()).collect(),
        out,
    );
    ids(
        "Only in the baseline",
        c.only_in_baseline.iter().map(String::as_str).collect(),
        out,
    );
    ids(
        "Only in this record",
        c.only_in_candidate.iter().map(String::as_str).collect(),
        out,
    );
}

/// Record text for a table cell or a line: HTML and Markdown escaped, on one line.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' => out.push_str(" ⏎ "),
            '\r' => {}
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '~' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Record text inside a code span: no backticks to close it early, no pipes to split a cell.
fn code(s: &str) -> String {
    s.replace(['`', '\n'], " ").replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_markdown_has_every_part_and_escapes_record_text() {
        let r = crate::eval::report::tests::planted();
        let text = render(&r, "0123abcd", None);
        assert!(!text.contains("Against the baseline"));
        for part in [
            "# Eval report: s&lt;i&gt;",
            "## Summary",
            "## Scores",
            "## Latency",
            "## Outputs",
            "## Cases",
            "**Pass rate 66.7 %**",
            "threshold 50.0 %: **met**",
            "| stop | 2 |",
            "| >16384 | 1 |",
            "`0123abcd`",
            "| 12.0 ms | 40.0 ms |",
        ] {
            assert!(text.contains(part), "{part}\n{text}");
        }
        assert!(!text.contains("<script"), "{text}");
        assert!(!text.contains("<img"), "{text}");
        assert!(
            text.contains("&lt;script&gt;alert('x')&lt;/script&gt; \\| \\*not\\* bold"),
            "{text}"
        );
        // Each case is one table row.
        let rows = text
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains(" ms | "))
            .count();
        assert_eq!(rows, 4, "{text}");
        assert!(text.contains("word word") && !text.contains(&"word ".repeat(100)));
    }
}
