//! `loadgen report`: the tables of docs/BENCHMARKS.md, from a file of result lines.
//!
//! Absolute figures on a shared 2-core machine move with whatever else runs; ratios taken within
//! one run do not move nearly as much. So every table is relative: the latency a proxy *adds* is
//! its latency minus the upstream's own (the `baseline` label, measured directly at the same
//! concurrency), and each figure is also given as a ratio to the plain reverse proxy (`reference`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

/// Which table to print.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// Requests per second and added latency, by connections.
    Overhead,
    /// Time to first token and inter-token gap, and what the proxies add to them.
    Stream,
    /// Admitted rate against the configured one.
    Limits,
}

fn us(v: &Value, hist: &str, q: &str) -> Option<f64> {
    v.get(hist)?.get(q)?.as_f64()
}

fn ms(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.3}", x / 1000.0))
}

fn ratio(x: Option<f64>, of: Option<f64>) -> String {
    match (x, of) {
        (Some(x), Some(of)) if of > 0.0 => format!("{:.2}", x / of),
        _ => "–".into(),
    }
}

fn label(v: &Value) -> &str {
    v["label"].as_str().unwrap_or("?")
}

/// A short summary of one run, for the terminal.
pub fn one_line(v: &Value) -> String {
    let mut s = format!(
        "{:<14} c={:<5} responses={:<7} errors={:<4} rps={:<9.1} p50={}ms p99={}ms",
        label(v),
        v["connections"],
        v["responses"],
        v["errors"],
        v["rps"].as_f64().unwrap_or(0.0),
        ms(us(v, "latency_us", "p50")),
        ms(us(v, "latency_us", "p99")),
    );
    if !v["ttft_us"].is_null() {
        s += &format!(
            " ttft p50={}ms gap p50={}ms p99={}ms",
            ms(us(v, "ttft_us", "p50")),
            ms(us(v, "gap_us", "p50")),
            ms(us(v, "gap_us", "p99")),
        );
    }
    if let Some(samples) = v["error_samples"].as_array().filter(|a| !a.is_empty()) {
        s += &format!(" first errors: {samples:?}");
    }
    s
}

/// Reads the file and prints the table of `kind`.
pub fn print(
    file: &Path,
    baseline: &str,
    reference: &str,
    kind: Kind,
    configured_per_minute: Option<f64>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let runs: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a line is not a result")?;
    // Connections → the runs at that concurrency, in file order.
    let mut by_conns: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for r in &runs {
        by_conns
            .entry(r["connections"].as_u64().unwrap_or(0))
            .or_default()
            .push(r);
    }
    match kind {
        Kind::Overhead => overhead(&by_conns, baseline, reference),
        Kind::Stream => stream(&by_conns, baseline, reference),
        Kind::Limits => limits(&runs, configured_per_minute),
    }
    Ok(())
}

fn find<'a>(runs: &[&'a Value], name: &str) -> Option<&'a Value> {
    runs.iter().copied().find(|r| label(r) == name)
}

/// `x` of `run` minus `x` of the baseline.
fn added(run: &Value, base: Option<&Value>, hist: &str, q: &str) -> Option<f64> {
    Some(us(run, hist, q)? - us(base?, hist, q)?)
}

fn overhead(by_conns: &BTreeMap<u64, Vec<&Value>>, baseline: &str, reference: &str) {
    println!(
        "| connections | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | \
         added p50 ÷ {reference} | added p99 ÷ {reference} | req/s ÷ {reference} | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (conns, runs) in by_conns {
        let base = find(runs, baseline);
        let refr = find(runs, reference);
        for r in runs {
            let a50 = added(r, base, "latency_us", "p50");
            let a99 = added(r, base, "latency_us", "p99");
            let is_base = label(r) == baseline;
            let non_2xx: u64 = r["statuses"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| !k.starts_with('2'))
                        .filter_map(|(_, v)| v.as_u64())
                        .sum()
                })
                .unwrap_or(0);
            println!(
                "| {conns} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                label(r),
                r["rps"].as_f64().unwrap_or(0.0),
                ms(us(r, "latency_us", "p50")),
                ms(us(r, "latency_us", "p99")),
                if is_base { "–".into() } else { ms(a50) },
                if is_base { "–".into() } else { ms(a99) },
                if is_base {
                    "–".into()
                } else {
                    ratio(a50, refr.and_then(|n| added(n, base, "latency_us", "p50")))
                },
                if is_base {
                    "–".into()
                } else {
                    ratio(a99, refr.and_then(|n| added(n, base, "latency_us", "p99")))
                },
                ratio(r["rps"].as_f64(), refr.and_then(|n| n["rps"].as_f64())),
                r["errors"].as_u64().unwrap_or(0) + non_2xx,
            );
        }
    }
}

fn stream(by_conns: &BTreeMap<u64, Vec<&Value>>, baseline: &str, reference: &str) {
    println!(
        "| streams | target | TTFT p50 ms | TTFT p99 ms | added TTFT p50 | added TTFT p99 | \
         gap p50 ms | gap p99 ms | added gap p50 | added gap p99 | added TTFT p50 ÷ {reference} | \
         tokens | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (conns, runs) in by_conns {
        let base = find(runs, baseline);
        let refr = find(runs, reference);
        for r in runs {
            let is_base = label(r) == baseline;
            let dash = |s: String| if is_base { "–".to_owned() } else { s };
            let a_ttft = added(r, base, "ttft_us", "p50");
            println!(
                "| {conns} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                label(r),
                ms(us(r, "ttft_us", "p50")),
                ms(us(r, "ttft_us", "p99")),
                dash(ms(a_ttft)),
                dash(ms(added(r, base, "ttft_us", "p99"))),
                ms(us(r, "gap_us", "p50")),
                ms(us(r, "gap_us", "p99")),
                dash(ms(added(r, base, "gap_us", "p50"))),
                dash(ms(added(r, base, "gap_us", "p99"))),
                dash(ratio(
                    a_ttft,
                    refr.and_then(|n| added(n, base, "ttft_us", "p50"))
                )),
                r["gap_us"]["count"].as_u64().unwrap_or(0)
                    + r["ttft_us"]["count"].as_u64().unwrap_or(0),
                r["errors"].as_u64().unwrap_or(0),
            );
        }
    }
}

fn limits(runs: &[Value], configured_per_minute: Option<f64>) {
    let configured = configured_per_minute.map(|m| m / 60.0);
    println!(
        "| target | offered req/s | configured req/s | sent | 200 | 429 | admitted req/s (whole run) | \
         admitted req/s (second half) | second half ÷ configured |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let count = |s: &str| r["statuses"][s].as_u64().unwrap_or(0);
        let timeline: Vec<f64> = r["timeline"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let window = r["window_s"].as_f64().unwrap_or(0.0);
        // Whole seconds of the second half, so a partial last second does not count.
        let half = timeline.len() / 2;
        let tail = &timeline[half..timeline.len().min(window.floor() as usize).max(half)];
        let tail_rate = (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64);
        println!(
            "| {} | {:.1} | {} | {} | {} | {} | {:.2} | {} | {} |",
            label(r),
            r["offered_rps"].as_f64().unwrap_or(0.0),
            configured.map_or("–".into(), |c| format!("{c:.2}")),
            r["responses"].as_u64().unwrap_or(0) + r["errors"].as_u64().unwrap_or(0),
            count("200"),
            count("429"),
            r["ok_rps"].as_f64().unwrap_or(0.0),
            tail_rate.map_or("–".into(), |t| format!("{t:.2}")),
            ratio(tail_rate, configured),
        );
    }
}
