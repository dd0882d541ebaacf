//! Guardrail scan throughput: clean prose and match-dense text with the shipped policy, the
//! per-chunk cost of the streaming scanner, and the one-pass engine against a rule-by-rule loop.
//!
//! `cargo bench --bench guardrails`; figures are recorded in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::guardrails::scan::Scanner;
use sluice::guardrails::{Direction, Policy};

const PROSE: &str = "The committee met on Tuesday to review the quarterly figures. Revenue grew \
in every region except the north, where a late shipment moved two large orders into the next \
period. The team agreed to revisit the forecast once the numbers settle, and to share a short \
summary with everyone before the end of the week. Questions can go to the usual channel. ";

const DENSE: &str = "Mail jane.doe@example.com or call +44 20 7946 0958; card 4111 1111 1111 1111, \
SSN 123-45-6789, host 192.168.10.4, key AKIAIOSFODNN7EXAMPLE, token ghp_0123456789abcdefghijABCDEFGHIJ012345. ";

fn repeat(s: &str, bytes: usize) -> String {
    let r = s.repeat(bytes / s.len() + 1);
    r[..r.floor_char_boundary_compat(bytes)].to_string()
}

fn policy() -> Arc<Policy> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("guardrails");
    Arc::new(Policy::load(&dir).unwrap())
}

fn whole(c: &mut Criterion) {
    let p = policy();
    let mut g = c.benchmark_group("guardrails_scan");
    for (name, base) in [("clean_prose", PROSE), ("match_dense", DENSE)] {
        let text = repeat(base, 64 * 1024);
        let text = &text[..text.floor_char_boundary_compat(64 * 1024)];
        g.throughput(Throughput::Bytes(text.len() as u64));
        for dir in [Direction::Input, Direction::Output] {
            g.bench_with_input(BenchmarkId::new(name, dir.as_str()), text, |b, t| {
                b.iter(|| Scanner::scan_text(Arc::clone(&p), dir, p.actions_all(dir), t))
            });
        }
    }
    g.finish();
}

fn naive_vs_one_pass(c: &mut Criterion) {
    let p = policy();
    let dir = Direction::Input;
    let regexes: Vec<regex::Regex> = p
        .patterns(dir)
        .iter()
        .map(|s| {
            regex::RegexBuilder::new(s)
                .size_limit(256 << 20)
                .build()
                .unwrap()
        })
        .collect();
    let mut g = c.benchmark_group("guardrails_one_pass_vs_naive");
    for (name, base) in [("clean_prose", PROSE), ("match_dense", DENSE)] {
        let text = repeat(base, 64 * 1024);
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("one_pass", name), &text, |b, t| {
            b.iter(|| Scanner::scan_text(Arc::clone(&p), dir, p.actions_all(dir), t))
        });
        // Each pattern on its own over the whole text, as a rule-by-rule loop would (no
        // validators, so this understates the naive cost).
        g.bench_with_input(BenchmarkId::new("rule_by_rule", name), &text, |b, t| {
            b.iter(|| {
                regexes
                    .iter()
                    .map(|r| r.find_iter(t).count())
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

fn streaming(c: &mut Criterion) {
    let p = policy();
    let dir = Direction::Output;
    let mut g = c.benchmark_group("guardrails_stream_chunk");
    for (name, base) in [("clean_prose", PROSE), ("match_dense", DENSE)] {
        let text = repeat(base, 16 * 1024);
        // Tokens arrive a few bytes at a time; 16-byte pieces on character boundaries.
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + 16).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            pieces.push(&text[at..end]);
            at = end;
        }
        g.throughput(Throughput::Elements(pieces.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("16_byte_chunks", name),
            &pieces,
            |b, ps| {
                b.iter(|| {
                    let mut s = Scanner::new(Arc::clone(&p), dir, p.actions_all(dir));
                    let mut n = 0;
                    for piece in ps {
                        n += s.push(piece).release.len();
                    }
                    n + s.finish().release.len()
                })
            },
        );
    }
    g.finish();
}

trait FloorCompat {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCompat for str {
    fn floor_char_boundary_compat(&self, i: usize) -> usize {
        let mut i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = whole, naive_vs_one_pass, streaming
}
criterion_main!(benches);
