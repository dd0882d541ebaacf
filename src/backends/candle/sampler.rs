//! Choosing the next token from the model's logits.
//!
//! The order is the usual one (llama.cpp, HF): repetition penalty on recent tokens, then
//! temperature, top-k, softmax, top-p, and a draw from what is left. Temperature 0 is greedy.
//! The random source is seeded per request, so the same seed and prompt give the same text.
//! The vocabulary is ~50k entries and this runs once per token, so the common paths avoid a full
//! sort: plain sampling is one linear pass, and top-p first tries the 256 most likely tokens.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Candidates examined before falling back to a full sort for top-p.
const TOP_P_FAST_PATH: usize = 256;

/// Sampling settings of one request, as the API gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy. OpenAI's default is 1.
    pub temperature: f64,
    /// 1 = off.
    pub top_p: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off; above 1 makes recent tokens less likely.
    pub repetition_penalty: f32,
    /// Tokens of recent context the penalty applies to.
    pub repeat_last_n: usize,
    /// `None` draws a seed from the OS.
    pub seed: Option<u64>,
}

/// The per-request sampler.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// (probability, token) scratch space, kept between steps to avoid allocating.
    scratch: Vec<(f32, u32)>,
}

// === impl SamplingParams ===

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: None,
        }
    }
}

// === impl Sampler ===

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Sampler {
            params,
            rng,
            scratch: Vec::new(),
        }
    }

    /// Picks the next token. `logits` is modified in place; `context` is every token so far
    /// (prompt and generated), of which the last `repeat_last_n` are penalised.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        self.apply_repetition_penalty(logits, context);
        if self.params.temperature <= 0.0 || self.params.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = (1.0 / self.params.temperature) as f32;
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (l * inv_t, i as u32)),
        );
        if scratch.is_empty() {
            return argmax(logits);
        }
        let k = self.params.top_k;
        if k > 0 && k < scratch.len() {
            scratch.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            scratch.truncate(k);
        }
        // Softmax over the candidates.
        let max = scratch
            .iter()
            .map(|c| c.0)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0f32;
        for c in scratch.iter_mut() {
            c.0 = (c.0 - max).exp();
            total += c.0;
        }
        for c in scratch.iter_mut() {
            c.0 /= total;
        }
        let top_p = self.params.top_p as f32;
        if top_p < 1.0 {
            nucleus(scratch, top_p);
        }
        let mass: f32 = scratch.iter().map(|c| c.0).sum();
        let mut r = self.rng.random::<f32>() * mass;
        for &(p, id) in scratch.iter() {
            if r < p {
                return id;
            }
            r -= p;
        }
        // Rounding left `r` a hair above the last probability.
        scratch
            .last()
            .map(|c| c.1)
            .unwrap_or_else(|| argmax(logits))
    }

    fn apply_repetition_penalty(&self, logits: &mut [f32], context: &[u32]) {
        let penalty = self.params.repetition_penalty;
        if penalty == 1.0 || self.params.repeat_last_n == 0 {
            return;
        }
        let start = context.len().saturating_sub(self.params.repeat_last_n);
        let mut seen = std::collections::HashSet::new();
        for &id in &context[start..] {
            if !seen.insert(id) {
                continue;
            }
            if let Some(l) = logits.get_mut(id as usize) {
                // As in llama.cpp and HF: shrink positive logits, push negative ones further down.
                *l = if *l >= 0.0 {
                    *l / penalty
                } else {
                    *l * penalty
                };
            }
        }
    }
}

/// Keeps the smallest set of most likely candidates whose mass reaches `top_p`, sorted by
/// descending probability. `cands` holds normalised probabilities.
fn nucleus(cands: &mut Vec<(f32, u32)>, top_p: f32) {
    let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if cands.len() > TOP_P_FAST_PATH {
        // The head of the distribution usually holds the nucleus: sort only that.
        cands.select_nth_unstable_by(TOP_P_FAST_PATH - 1, desc);
        cands[..TOP_P_FAST_PATH].sort_unstable_by(desc);
        if let Some(n) = cut(&cands[..TOP_P_FAST_PATH], top_p) {
            cands.truncate(n);
            return;
        }
    }
    cands.sort_unstable_by(desc);
    let n = cut(cands, top_p).unwrap_or(cands.len());
    cands.truncate(n);
}

/// How many of the sorted candidates reach `top_p`, if they do.
fn cut(sorted: &[(f32, u32)], top_p: f32) -> Option<usize> {
    let mut acc = 0f32;
    for (i, c) in sorted.iter().enumerate() {
        acc += c.0;
        if acc >= top_p {
            return Some(i + 1);
        }
    }
    None
}

/// The index of the largest logit; the lowest index wins a tie.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    fn draw(params: SamplingParams, n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params);
        (0..n).map(|_| s.sample(&mut logits(), &[])).collect()
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let p = SamplingParams {
            temperature: 1.5,
            seed: Some(42),
            ..Default::default()
        };
        let a = draw(p, 50);
        assert_eq!(a, draw(p, 50));
        let b = draw(
            SamplingParams {
                seed: Some(43),
                ..p
            },
            50,
        );
        assert_ne!(a, b);
    }

    #[test]
    fn zero_temperature_is_argmax() {
        let l = logits();
        let best = argmax(&l);
        let p = SamplingParams {
            temperature: 0.0,
            seed: Some(1),
            ..Default::default()
        };
        assert!(draw(p, 10).iter().all(|&t| t == best));
    }

    #[test]
    fn top_k_limits_choices() {
        let l = logits();
        let mut order: Vec<u32> = (0..l.len() as u32).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let top3 = &order[..3];
        let p = SamplingParams {
            temperature: 2.0,
            top_k: 3,
            seed: Some(7),
            ..Default::default()
        };
        let got = draw(p, 200);
        assert!(got.iter().all(|t| top3.contains(t)));
        // With a high temperature all three show up.
        assert!(top3.iter().all(|t| got.contains(t)));
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // One token holds ~88% of the mass, the rest are negligible: top_p 0.5 leaves only it.
        let mut l = vec![0.0f32; 600];
        l[123] = 9.0;
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut l.clone(), &[]), 123);
        }
        // Reaching past the fast-path head still works: flat logits, top_p 0.9.
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.9,
            seed: Some(3),
            ..Default::default()
        });
        let flat = vec![0.0f32; 600];
        let got: Vec<u32> = (0..300).map(|_| s.sample(&mut flat.clone(), &[])).collect();
        // Ties break by id, so the nucleus is the lowest ids (540 of them, one more for rounding).
        assert!(got.iter().all(|&t| t <= 541), "{got:?}");
    }

    #[test]
    fn repetition_penalty_demotes_recent_tokens() {
        let mut l = vec![0.0f32; 10];
        l[4] = 2.0;
        l[5] = 1.5;
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut l.clone(), &[1, 2]), 4);
        assert_eq!(s.sample(&mut l.clone(), &[4]), 5);
        // Outside the window the penalty does not apply.
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            repeat_last_n: 1,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut l.clone(), &[4, 9]), 4);
    }
}
