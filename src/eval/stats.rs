//! The statistics of a record: pass rate with its uncertainty, percentiles, a length histogram.
//!
//! A pass rate from ten cases is a rough figure, and comparing two runs by their rates alone
//! invites reading noise as a regression. The record carries the 95 % Wilson score interval
//! beside the rate: unlike the normal approximation it stays inside 0..1 and is honest at 0 %,
//! 100 % and small n, which is where golden sets live. Percentiles are nearest-rank (a value
//! that was measured, never an interpolation), and answer lengths go in a fixed set of
//! buckets so two records' histograms can be compared bucket by bucket.

use serde::{Deserialize, Serialize};

/// z for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Upper bounds (in characters, inclusive) of the answer-length buckets; the last bucket is open.
pub const LENGTH_BUCKETS: [usize; 7] = [0, 16, 64, 256, 1024, 4096, 16384];

/// A closed interval of proportions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// Nearest-rank percentiles of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// One bucket of a histogram: values at most `le` (`null` for the open last bucket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub le: Option<usize>,
    pub count: usize,
}

/// The 95 % Wilson score interval of `successes` out of `n`; `0..1` when `n` is 0.
pub fn wilson(successes: usize, n: usize) -> Interval {
    if n == 0 {
        return Interval {
            low: 0.0,
            high: 1.0,
        };
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    // At 0 and n the bound is exactly 0 or 1; rounding would leave it a hair inside.
    Interval {
        low: if successes == 0 {
            0.0
        } else {
            (centre - half).max(0.0)
        },
        high: if successes as f64 >= n {
            1.0
        } else {
            (centre + half).min(1.0)
        },
    }
}

/// Nearest-rank percentiles; `None` for an empty sample.
pub fn percentiles(values: &[f64]) -> Option<Percentiles> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let i = (q * sorted.len() as f64).ceil() as usize;
        sorted[i.clamp(1, sorted.len()) - 1]
    };
    Some(Percentiles {
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        max: sorted[sorted.len() - 1],
    })
}

/// Counts of `lengths` in [`LENGTH_BUCKETS`], every bucket listed (empty ones too).
pub fn length_histogram(lengths: impl IntoIterator<Item = usize>) -> Vec<Bucket> {
    let mut counts = [0usize; LENGTH_BUCKETS.len() + 1];
    for len in lengths {
        let i = LENGTH_BUCKETS
            .iter()
            .position(|&le| len <= le)
            .unwrap_or(LENGTH_BUCKETS.len());
        counts[i] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &count)| Bucket {
            le: LENGTH_BUCKETS.get(i).copied(),
            count,
        })
        .collect()
}

/// The mean, 0 for an empty sample.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn wilson_matches_published_values() {
        // 8 of 10: 0.4902 .. 0.9433 (Newcombe 1998, method 3).
        let i = wilson(8, 10);
        assert!(close(i.low, 0.4902) && close(i.high, 0.9433), "{i:?}");
        // 0 of 10 and 10 of 10 stay inside 0..1 and are not degenerate.
        let i = wilson(0, 10);
        assert!(i.low == 0.0 && close(i.high, 0.2775), "{i:?}");
        let i = wilson(10, 10);
        assert!(close(i.low, 0.7225) && i.high == 1.0, "{i:?}");
        // 81 of 263 (Newcombe's example): 0.2553 .. 0.3662.
        let i = wilson(81, 263);
        assert!(close(i.low, 0.2553) && close(i.high, 0.3662), "{i:?}");
        assert_eq!(
            wilson(0, 0),
            Interval {
                low: 0.0,
                high: 1.0
            }
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&v).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        let p = percentiles(&[3.0]).unwrap();
        assert_eq!((p.p50, p.p99), (3.0, 3.0));
        let p = percentiles(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((p.p50, p.p95), (3.0, 5.0));
        assert!(percentiles(&[]).is_none());
        assert!(percentiles(&[f64::NAN]).is_none());
    }

    #[test]
    fn histogram_lists_every_bucket() {
        let h = length_histogram([0, 1, 16, 17, 5000, 100_000]);
        let counts: Vec<usize> = h.iter().map(|b| b.count).collect();
        assert_eq!(counts, [1, 2, 1, 0, 0, 0, 1, 1]);
        assert_eq!(h.last().unwrap().le, None);
        assert_eq!(h[0].le, Some(0));
        assert_eq!(mean(&[]), 0.0);
        assert_eq!(mean(&[1.0, 2.0]), 1.5);
    }
}
