//! The HTML report: one self-contained page (inline CSS and SVG, no script, no external asset).
//!
//! Laid out for reading on a laptop: a header naming exactly what ran, summary cards, the
//! charts, then every case with its badge, scores and output; a long output is cut in the table
//! with the full text one click away in a `<details>`, which needs no script. A
//! Content-Security-Policy that allows no script stands behind the escaping.

use std::fmt::Write;

use super::{
    duration, escape, failure, latencies, length_buckets, percent, svg, truncate, when,
    OUTPUT_SHOWN,
};
use crate::eval::compare::Comparison;
use crate::eval::read::RecordView;

const STYLE: &str = r#"
:root { --ink:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --card:#fff;
        --accent:#2563eb; --pass:#15803d; --pass-bg:#dcfce7; --fail:#b91c1c; --fail-bg:#fee2e2; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 32px 24px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 36px 0 12px; }
.sub { color: var(--muted); margin: 0 0 20px; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0;
          background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; margin-top: 20px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
.card .label { color: var(--muted); font-size: 13px; }
.card .value { font-size: 26px; font-weight: 600; margin-top: 2px; }
.card .note { color: var(--muted); font-size: 13px; }
.card.good { border-left: 4px solid var(--pass); }
.card.bad { border-left: 4px solid var(--fail); }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
figcaption { font-weight: 600; margin-bottom: 8px; }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line);
        border-radius: 8px; overflow: hidden; }
th, td { text-align: left; vertical-align: top; padding: 8px 10px; border-bottom: 1px solid var(--line); }
th { background: #f1f5f9; font-size: 13px; color: var(--muted); font-weight: 600; }
tr:last-child td { border-bottom: none; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.badge.pass { background: var(--pass-bg); color: var(--pass); }
.badge.fail { background: var(--fail-bg); color: var(--fail); }
.tag { display: inline-block; background: #eef2ff; color: #3730a3; border-radius: 4px; padding: 0 6px;
       font-size: 12px; margin: 0 4px 2px 0; }
.why { color: var(--fail); font-size: 13px; margin-top: 4px; }
.scores { list-style: none; margin: 0; padding: 0; font-size: 13px; }
.scores .no { color: var(--fail); }
.out { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; max-width: 460px; }
details summary { cursor: pointer; color: var(--accent); font-size: 13px; margin-top: 4px; }
details pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f1f5f9; padding: 8px;
              border-radius: 6px; max-height: 480px; overflow: auto; }
.failed-list a { color: var(--fail); margin-right: 10px; }
.warn { background: #fef3c7; color: #92400e; border-radius: 6px; padding: 8px 12px; }
td.worse { color: var(--fail); font-weight: 600; }
.ids a { margin-right: 8px; }
footer { color: var(--muted); font-size: 13px; margin-top: 40px; }
"#;

/// Renders `r`; `name` is the record's hash; `against`, what changed from a baseline.
pub fn render(r: &RecordView, name: &str, against: Option<&Comparison>) -> String {
    let s = &r.summary;
    let ci = r.pass_rate_ci95();
    let n = s.passed + s.failed;
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>Eval report: {title}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>{title}</h1>
<p class="sub">Eval report · model <strong>{model}</strong> · {started}</p>
"#,
        title = escape(&r.suite.name),
        model = escape(&r.model),
        started = when(r.started_at),
    );

    // What ran.
    h.push_str(r#"<dl class="meta">"#);
    let meta = [
        (
            "Suite",
            format!(
                "{} <code>{}</code>",
                escape(&r.suite.name),
                escape(&r.suite.file)
            ),
        ),
        ("Model", escape(&r.model)),
        ("Target", format!("<code>{}</code>", escape(&r.target))),
        (
            "Versions",
            format!(
                "Sluice {}, record format {}",
                escape(&r.sluice_version),
                r.format
            ),
        ),
        (
            "Dataset",
            format!(
                "<code>{}</code>, {} cases, sha256 <code>{}</code>",
                escape(&r.dataset.file),
                r.dataset.cases,
                escape(&r.dataset.sha256)
            ),
        ),
        (
            "Suite sha256",
            format!("<code>{}</code>", escape(&r.suite.sha256)),
        ),
        (
            "Request",
            format!("<code>{}</code>", escape(&r.request.to_string())),
        ),
        ("Started", when(r.started_at)),
        ("Duration", duration(r.duration_ms)),
        ("Record", format!("<code>{}</code>", escape(name))),
    ];
    for (k, v) in meta {
        let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
    }
    h.push_str("</dl>\n");

    // Summary cards.
    h.push_str(r#"<div class="cards">"#);
    let card = |h: &mut String, class: &str, label: &str, value: String, note: String| {
        let _ = write!(
            h,
            r#"<div class="card {class}"><div class="label">{label}</div><div class="value">{value}</div><div class="note">{note}</div></div>"#
        );
    };
    card(
        &mut h,
        if s.threshold_met { "good" } else { "bad" },
        "Pass rate",
        percent(s.pass_rate),
        format!(
            "{}/{n} passed · 95 % CI {} – {}",
            s.passed,
            percent(ci.low),
            percent(ci.high)
        ),
    );
    card(
        &mut h,
        if s.threshold_met { "good" } else { "bad" },
        "Threshold",
        if s.threshold_met { "met" } else { "NOT met" }.to_owned(),
        format!("needs {}", percent(s.threshold)),
    );
    match s.latency_ms {
        Some(p) => card(
            &mut h,
            "",
            "Latency p50",
            format!("{:.0} ms", p.p50),
            format!("p95 {:.0} ms · max {:.0} ms", p.p95, p.max),
        ),
        None => card(&mut h, "", "Latency", "–".into(), "no answers".into()),
    }
    card(
        &mut h,
        if s.errors > 0 { "bad" } else { "" },
        "Errors",
        s.errors.to_string(),
        format!(
            "guardrail blocks: {} input, {} output",
            s.outputs.guardrail.blocked_input, s.outputs.guardrail.blocked_output
        ),
    );
    card(
        &mut h,
        "",
        "Tokens",
        s.tokens.total.to_string(),
        format!(
            "{} prompt · {} completion",
            s.tokens.prompt, s.tokens.completion
        ),
    );
    h.push_str("</div>\n");

    if let Some(c) = against {
        comparison(&mut h, c, r);
    }

    // Charts.
    let scores: Vec<(String, f64)> = s.mean_scores.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let _ = write!(
        h,
        r#"<h2>Scores and latency</h2><div class="charts"><figure><figcaption>Mean score by scorer</figcaption>{}</figure><figure><figcaption>Latency per case</figcaption>{}</figure></div>"#,
        svg::score_bars(&scores),
        svg::latency_curve(
            &latencies(r),
            s.latency_ms.map(|p| p.p50),
            s.latency_ms.map(|p| p.p95)
        ),
    );
    let mut reasons = String::from(
        r#"<table><thead><tr><th>finish reason</th><th class="num">answers</th></tr></thead><tbody>"#,
    );
    for (reason, count) in &s.outputs.finish_reasons {
        let _ = write!(
            reasons,
            r#"<tr><td><code>{}</code></td><td class="num">{count}</td></tr>"#,
            escape(reason)
        );
    }
    reasons.push_str("</tbody></table>");
    let _ = write!(
        h,
        r#"<h2>Outputs</h2><div class="charts"><figure><figcaption>Answer length · mean {:.1} characters</figcaption>{}</figure><figure><figcaption>Finish reasons</figcaption>{reasons}</figure></div>"#,
        s.outputs.mean_length_chars,
        svg::histogram(&length_buckets(r), "characters per answer"),
    );

    // Cases.
    let _ = write!(h, "<h2>Cases ({})</h2>", r.cases.len());
    let failed: Vec<(usize, &str)> = r
        .cases
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.passed)
        .map(|(i, c)| (i, c.id.as_str()))
        .collect();
    if !failed.is_empty() {
        h.push_str(r#"<p class="failed-list">Failed: "#);
        for (i, id) in failed {
            let _ = write!(h, r##"<a href="#case-{i}">{}</a>"##, escape(id));
        }
        h.push_str("</p>");
    }
    h.push_str(
        r#"<table><thead><tr><th>id</th><th>result</th><th>scores</th><th class="num">latency</th><th>output</th></tr></thead><tbody>"#,
    );
    for (i, c) in r.cases.iter().enumerate() {
        let tags: String = c
            .tags
            .iter()
            .map(|t| format!(r#"<span class="tag">{}</span>"#, escape(t)))
            .collect();
        let badge = if c.passed {
            r#"<span class="badge pass">pass</span>"#.to_owned()
        } else {
            format!(
                r#"<span class="badge fail">fail</span>{}"#,
                failure(c)
                    .map(|w| format!(r#"<div class="why">{}</div>"#, escape(&truncate(&w, 200).0)))
                    .unwrap_or_default()
            )
        };
        let scores: String = c
            .scores
            .iter()
            .map(|x| {
                format!(
                    r#"<li class="{}" title="{}">{} <span class="mono">{:.2}</span></li>"#,
                    if x.passed { "yes" } else { "no" },
                    escape(x.detail.as_deref().unwrap_or("")),
                    escape(&x.scorer),
                    x.score
                )
            })
            .collect();
        let (shown, cut) = truncate(&c.output, OUTPUT_SHOWN);
        let mut output = format!(r#"<pre class="out">{}</pre>"#, escape(&shown));
        if cut {
            let _ = write!(
                output,
                "<details><summary>full output ({} characters)</summary><pre>{}</pre></details>",
                c.output.chars().count(),
                escape(&c.output)
            );
        }
        let status = match (c.status, &c.finish_reason) {
            (Some(200), Some(f)) => format!("finish: {}", escape(f)),
            (Some(st), _) => format!("HTTP {st}"),
            (None, _) => "no answer".into(),
        };
        let _ = write!(
            h,
            r#"<tr id="case-{i}"><td><code>{}</code><div>{tags}</div></td><td>{badge}</td><td><ul class="scores">{scores}</ul></td><td class="num">{:.1} ms<div class="note">{status}</div></td><td>{output}</td></tr>"#,
            escape(&c.id),
            c.latency_ms,
        );
    }
    h.push_str("</tbody></table>\n");
    let _ = write!(
        h,
        "<footer>Written by <code>sluice eval report</code> from record <code>{}</code>.</footer>\n</main>\n</body>\n</html>\n",
        escape(name)
    );
    h
}

/// The section "Against the baseline"; case ids link to the rows of `r`'s table.
fn comparison(h: &mut String, c: &Comparison, r: &RecordView) {
    let b = &c.baseline;
    let _ = write!(
        h,
        r#"<h2>Against the baseline</h2><div class="card {}"><div class="label">Baseline <code>{}</code> · model {} · {}</div><div class="value">{}</div>"#,
        if c.verdict.regressed { "bad" } else { "good" },
        escape(&b.record),
        escape(&b.model),
        escape(&b.target),
        if c.verdict.regressed {
            "Regressed significantly"
        } else {
            "Not significantly worse"
        }
    );
    for w in &c.warnings {
        let _ = write!(
            h,
            r#"<p class="warn"><strong>Not comparable:</strong> {}</p>"#,
            escape(w)
        );
    }
    if !c.verdict.reasons.is_empty() {
        h.push_str("<ul>");
        for reason in &c.verdict.reasons {
            let _ = write!(h, "<li>{}</li>", escape(reason));
        }
        h.push_str("</ul>");
    }
    let pf = &c.pass_fail;
    let _ = write!(
        h,
        r#"<p class="note">Pass rate {} → {} · {} paired cases · {} pass → fail · {} fail → pass · McNemar exact p = {:.4}</p></div>"#,
        percent(b.pass_rate),
        percent(c.candidate.pass_rate),
        pf.paired,
        pf.pass_to_fail,
        pf.fail_to_pass,
        pf.p_value
    );
    h.push_str(r#"<table style="margin-top:12px"><thead><tr><th>scorer</th><th class="num">baseline</th><th class="num">this record</th><th class="num">difference</th><th class="num">95 % CI</th></tr></thead><tbody>"#);
    let f = |x: Option<f64>| x.map_or_else(|| "–".to_owned(), |x| format!("{x:.3}"));
    for s in &c.scorers {
        let _ = write!(
            h,
            r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num{}">{}</td><td class="num">{}</td></tr>"#,
            escape(&s.scorer),
            f(s.baseline_mean),
            f(s.candidate_mean),
            if s.significant_regression {
                " worse"
            } else {
                ""
            },
            s.mean_difference
                .map_or_else(|| "–".to_owned(), |d| format!("{d:+.3}")),
            s.ci95.map_or_else(
                || "–".to_owned(),
                |ci| format!("{:+.3} … {:+.3}", ci.low, ci.high)
            )
        );
    }
    h.push_str("</tbody></table>");
    let row = |id: &str| r.cases.iter().position(|x| x.id == id);
    for (title, ids) in [
        (
            "Regressed",
            c.regressed
                .iter()
                .map(|x| x.id.as_str())
                .collect::<Vec<_>>(),
        ),
        (
            "Improved",
            c.improved.iter().map(|x| x.id.as_str()).collect(),
        ),
        (
            "Only in the baseline",
            c.only_in_baseline.iter().map(String::as_str).collect(),
        ),
        (
            "Only in this record",
            c.only_in_candidate.iter().map(String::as_str).collect(),
        ),
    ] {
        if ids.is_empty() {
            continue;
        }
        let _ = write!(h, r#"<p class="ids">{title} ({}): "#, ids.len());
        for id in ids {
            match row(id) {
                Some(i) => {
                    let _ = write!(h, r##"<a href="#case-{i}">{}</a> "##, escape(id));
                }
                None => {
                    let _ = write!(h, "<code>{}</code> ", escape(id));
                }
            }
        }
        h.push_str("</p>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_escapes_record_text() {
        let r = crate::eval::report::tests::planted();
        let page = render(&r, "0123abcd", None);
        assert!(!page.contains("Against the baseline"));
        assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
        assert_eq!(page.matches("<svg").count(), 3);
        // Nothing from the record became markup: no script, no planted element or attribute.
        assert!(!page.to_ascii_lowercase().contains("<script"), "{page}");
        assert!(!page.contains("<img") && !page.contains("<svg onload") && !page.contains("<b>"));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains("m&quot;x"));
        assert!(page.contains("title=\"none of &lt;&quot;Paris&quot;&gt; found\""));
        // No external asset, and scripts are refused anyway.
        for external in ["src=\"http", "href=\"http", "<link", "url("] {
            assert!(!page.contains(external), "{external}");
        }
        assert!(page.contains("default-src 'none'"));
        // The long output is cut in the table and whole in a <details>.
        assert!(page.contains("full output (1000 characters)"));
        assert!(page.contains(&"word ".repeat(200)));
        // The header, the cards and the failure link.
        for part in [
            "66.7 %",
            "95 % CI 20.8 % – 93.9 %",
            "needs 50.0 %",
            "cd34",
            "ab12",
            "2026-12-07T21:46:40Z",
            "5.2 s",
            "href=\"#case-1\"",
            "p95 40.0 ms",
            "finish: length",
        ] {
            assert!(page.contains(part), "{part}");
        }
    }

    #[test]
    fn against_a_baseline_the_page_names_what_regressed() {
        let r = crate::eval::report::tests::planted();
        let mut base = r.clone();
        base.dataset.sha256 = "<other>".into();
        base.cases[1].passed = true;
        base.cases[1].scores[0].score = 1.0;
        base.cases[1].scores[0].passed = true;
        let c = Comparison::of(&base, &r, ["base<1>.json", "cand.json"]);
        let page = render(&r, "0123abcd", Some(&c));
        assert!(page.contains("Against the baseline"));
        assert!(page.contains("Not comparable:</strong> the datasets differ"));
        assert!(page.contains("base&lt;1&gt;.json") && page.contains("&lt;other&gt;"));
        // The regressed case links to its row, its id escaped.
        assert!(page.contains(r##"Regressed (1): <a href="#case-1">&lt;img src=x&gt;</a>"##));
        assert!(page.contains("McNemar exact p = 1.0000"));
        assert!(!page.contains("<img") && !page.contains("<other>"));
        let text = crate::eval::report::markdown::render(&r, "0123abcd", Some(&c));
        assert!(text.contains("## Against the baseline"), "{text}");
        assert!(text.contains("Regressed (1): &lt;img src=x&gt;"), "{text}");
        assert!(
            text.contains("**Warning: not comparable:** the datasets differ"),
            "{text}"
        );
        assert!(
            text.contains("| contains | 0.667 | 0.667 | -0.333 | -1.000 … +0.000 |"),
            "{text}"
        );
    }
}
