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

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny generator whose output is fixed by its seed on
/// every platform and every version of every crate, so a bootstrap interval printed today is the
/// one printed next year from the same records. Not for secrets.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (`n > 0`), by Lemire's multiply-shift (its bias is below
    /// 2^-32 for any sample a golden set has).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// The exact McNemar test of paired pass/fail outcomes: the two-sided binomial p-value of
/// `b` cases that went one way against `c` that went the other, under "either way is equally
/// likely". Only the discordant pairs carry information, and an exact test is right at the
/// small counts golden sets give (the chi-squared approximation is not, below about 25).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // The binomial(n, 1/2) probabilities, in logs so that large n does not underflow.
    let mut log_pmf = -(n as f64) * std::f64::consts::LN_2;
    let mut tail = 0.0;
    for i in 0..=k {
        tail += log_pmf.exp();
        log_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    (2.0 * tail).min(1.0)
}

/// The mean of `diffs` with its 95 % paired-bootstrap percentile interval: `resamples` means of
/// `diffs` drawn with replacement, from a generator seeded with `seed`. `None` for no pairs.
pub fn bootstrap_mean(diffs: &[f64], resamples: usize, seed: u64) -> Option<(f64, Interval)> {
    if diffs.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = SplitMix64::new(seed);
    let n = diffs.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| diffs[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * resamples as f64) as usize).min(resamples - 1)];
    Some((
        mean(diffs),
        Interval {
            low: at(0.025),
            high: at(0.975),
        },
    ))
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

    #[test]
    fn mcnemar_matches_the_binomial() {
        // Ten discordant pairs all one way: 2 * (1/2)^10.
        assert!((mcnemar_exact(10, 0) - 2.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(0, 10), mcnemar_exact(10, 0));
        // 1 against 9: 2 * (1 + 10) / 1024.
        assert!((mcnemar_exact(9, 1) - 22.0 / 1024.0).abs() < 1e-12);
        // Five all one way is not enough at 5 %: 2/32.
        assert!((mcnemar_exact(5, 0) - 0.0625).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // Large n does not underflow: 600 against 400 is far from even.
        let p = mcnemar_exact(600, 400);
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let diffs: Vec<f64> = (0..40)
            .map(|i| if i % 4 == 0 { 0.0 } else { -1.0 })
            .collect();
        let (m, ci) = bootstrap_mean(&diffs, 2000, 7).unwrap();
        assert_eq!(m, -0.75);
        assert!(ci.low < m && m < ci.high && ci.high < 0.0, "{ci:?}");
        assert_eq!(bootstrap_mean(&diffs, 2000, 7).unwrap().1, ci);
        let (_, flat) = bootstrap_mean(&[0.0; 5], 100, 1).unwrap();
        assert_eq!((flat.low, flat.high), (0.0, 0.0));
        assert!(bootstrap_mean(&[], 100, 1).is_none());
        // The generator's published first output for seed 0.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let mut r = SplitMix64::new(3);
        assert!((0..1000).all(|_| r.below(7) < 7));
    }
}
