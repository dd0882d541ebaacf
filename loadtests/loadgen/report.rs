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

/// The first run labelled `name`.
fn find<'a>(runs: &[&'a Value], name: &str) -> Option<&'a Value> {
    runs.iter().copied().find(|r| label(r) == name)
}

/// `x` of `run` minus `x` of the baseline.
fn added(run: &Value, base: Option<&Value>, hist: &str, q: &str) -> Option<f64> {
    Some(us(run, hist, q)? - us(base?, hist, q)?)
}

/// One target's row of the overhead table: medians over the rounds it was measured in.
#[derive(Debug, Clone, PartialEq)]
struct OverheadRow<'a> {
    label: &'a str,
    rounds: usize,
    rps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    /// Latency added to the baseline's, taken per round against that round's baseline.
    added_p50: Option<f64>,
    added_p99: Option<f64>,
    errors: u64,
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
}

/// The runs of each label at one concurrency, labels in the order they first appear. A label
/// measured more than once was measured in rounds: its k-th run belongs to round k.
fn by_label<'a>(runs: &[&'a Value]) -> Vec<(&'a str, Vec<&'a Value>)> {
    let mut out: Vec<(&str, Vec<&Value>)> = Vec::new();
    for &r in runs {
        match out.iter_mut().find(|(l, _)| *l == label(r)) {
            Some((_, v)) => v.push(r),
            None => out.push((label(r), vec![r])),
        }
    }
    out
}

fn overhead_rows<'a>(runs: &[&'a Value], baseline: &str) -> Vec<OverheadRow<'a>> {
    let labels = by_label(runs);
    let base: &[&Value] = labels
        .iter()
        .find(|(l, _)| *l == baseline)
        .map_or(&[], |(_, v)| v.as_slice());
    labels
        .iter()
        .map(|(label, rounds)| {
            let each = |f: &dyn Fn(&Value) -> Option<f64>| {
                median(rounds.iter().filter_map(|r| f(r)).collect())
            };
            let added_each = |q: &str| {
                median(
                    rounds
                        .iter()
                        .zip(base)
                        .filter_map(|(r, b)| added(r, Some(b), "latency_us", q))
                        .collect(),
                )
            };
            let is_base = *label == baseline;
            OverheadRow {
                label,
                rounds: rounds.len(),
                rps: each(&|r| r["rps"].as_f64()),
                p50: each(&|r| us(r, "latency_us", "p50")),
                p99: each(&|r| us(r, "latency_us", "p99")),
                added_p50: if is_base { None } else { added_each("p50") },
                added_p99: if is_base { None } else { added_each("p99") },
                errors: rounds.iter().map(|r| failures(r)).sum(),
            }
        })
        .collect()
}

/// Transport errors plus responses that were not 2xx.
fn failures(r: &Value) -> u64 {
    let non_2xx: u64 = r["statuses"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.starts_with('2'))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0);
    r["errors"].as_u64().unwrap_or(0) + non_2xx
}

fn overhead(by_conns: &BTreeMap<u64, Vec<&Value>>, baseline: &str, reference: &str) {
    println!(
        "| connections | target | rounds | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | \
         added p50 ÷ {reference} | added p99 ÷ {reference} | req/s ÷ {reference} | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (conns, runs) in by_conns {
        let rows = overhead_rows(runs, baseline);
        let refr = rows.iter().find(|r| r.label == reference);
        for r in &rows {
            let is_base = r.label == baseline;
            let dash = |s: String| if is_base { "–".to_owned() } else { s };
            println!(
                "| {conns} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                r.rounds,
                r.rps.unwrap_or(0.0),
                ms(r.p50),
                ms(r.p99),
                dash(ms(r.added_p50)),
                dash(ms(r.added_p99)),
                dash(ratio(r.added_p50, refr.and_then(|n| n.added_p50))),
                dash(ratio(r.added_p99, refr.and_then(|n| n.added_p99))),
                ratio(r.rps, refr.and_then(|n| n.rps)),
                r.errors,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(label: &str, p50: f64, p99: f64, rps: f64) -> Value {
        json!({
            "label": label, "connections": 1, "rps": rps, "errors": 0,
            "statuses": {"200": 10, "429": 1},
            "latency_us": {"p50": p50, "p99": p99},
        })
    }

    #[test]
    fn rounds_give_medians_and_each_round_is_measured_against_its_own_baseline() {
        // Round 2's baseline is slow; the proxy's run next to it is slow by as much.
        let runs = [
            run("direct", 100.0, 200.0, 1000.0),
            run("proxy", 150.0, 300.0, 800.0),
            run("direct", 400.0, 500.0, 900.0),
            run("proxy", 460.0, 620.0, 700.0),
            run("direct", 110.0, 210.0, 1100.0),
            run("proxy", 150.0, 300.0, 600.0),
        ];
        let refs: Vec<&Value> = runs.iter().collect();
        let rows = overhead_rows(&refs, "direct");
        assert_eq!(rows.len(), 2);
        let (base, proxy) = (&rows[0], &rows[1]);
        assert_eq!((base.label, base.rounds), ("direct", 3));
        assert_eq!((base.added_p50, base.p50), (None, Some(110.0)));
        assert_eq!((proxy.label, proxy.rounds), ("proxy", 3));
        // Added per round: 50, 60, 40; the median of the runs' own p50s would say 40.
        assert_eq!(proxy.added_p50, Some(50.0));
        assert_eq!(proxy.added_p99, Some(100.0));
        assert_eq!(proxy.p50, Some(150.0));
        assert_eq!(proxy.rps, Some(700.0));
        assert_eq!(proxy.errors, 3);
    }

    #[test]
    fn one_round_is_the_run_itself() {
        let runs = [
            run("direct", 100.0, 200.0, 1000.0),
            run("proxy", 130.0, 290.0, 800.0),
        ];
        let refs: Vec<&Value> = runs.iter().collect();
        let rows = overhead_rows(&refs, "direct");
        assert_eq!(rows[1].added_p50, Some(30.0));
        assert_eq!(rows[1].added_p99, Some(90.0));
        assert_eq!(rows[1].rounds, 1);
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
