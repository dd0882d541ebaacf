//! The token loop of one generation: prefill, then sample, decode and stream one token at a time.
//!
//! Runs on a generation thread (see [`super::worker`]). Each step checks whether the client is
//! still there (its receiver dropped means the stream was dropped), so an abandoned request costs
//! at most one more model step. Events go out in the order an OpenAI stream has them: a delta with
//! the role, content deltas, a delta with the finish reason, then the exact token counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus::Histogram;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use super::detokenize::Detokenizer;
use super::sampler::{Sampler, SamplingParams};
use super::stop::{StopMatcher, StopOutcome};
use crate::api::types::{BackendEvent, ChoiceDelta, Usage};
use crate::error::{Error, Result};

/// Where a generation's events go.
pub type EventSender = mpsc::UnboundedSender<Result<BackendEvent>>;

/// Something that turns tokens into next-token logits: the real model, or a script in tests.
pub trait LanguageModel {
    /// Feeds `tokens` at positions `pos..` and returns the logits of the last one.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> anyhow::Result<Vec<f32>>;
}

/// One request, ready to generate.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Most tokens to generate (already checked to fit the context).
    pub max_tokens: usize,
    pub params: SamplingParams,
    pub stops: Vec<String>,
    pub events: EventSender,
}

/// What stays the same across generations of one model.
pub struct Generator<'a> {
    pub tokenizer: &'a Tokenizer,
    /// Tokens that end the answer.
    pub eos_ids: &'a [u32],
    pub stats: &'a Stats,
    pub prefill_rate: &'a Histogram,
    pub decode_rate: &'a Histogram,
}

/// Counters of one backend's generations, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Tokens sampled, over all generations.
    pub tokens_generated: AtomicU64,
    /// Generations that ended because the client went away.
    pub cancelled: AtomicU64,
    /// Generations that ran to a finish reason.
    pub completed: AtomicU64,
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Cancelled,
    Failed,
}

// === impl Generator ===

impl Generator<'_> {
    /// Runs `job` to its end on `model`.
    pub fn run(&self, model: &mut dyn LanguageModel, job: Job) -> Outcome {
        let events = job.events.clone();
        match self.generate(model, job) {
            Ok(Outcome::Cancelled) => {
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                Outcome::Cancelled
            }
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "local generation failed");
                let _ = events.send(Err(Error::Internal(format!("local generation: {e:#}"))));
                Outcome::Failed
            }
        }
    }

    fn generate(&self, model: &mut dyn LanguageModel, job: Job) -> anyhow::Result<Outcome> {
        let Job {
            prompt,
            max_tokens,
            params,
            stops,
            events,
        } = job;
        if events.is_closed() {
            // Dropped while it waited in the queue.
            return Ok(Outcome::Cancelled);
        }
        anyhow::ensure!(!prompt.is_empty(), "empty prompt");
        let started = Instant::now();
        let mut logits = model.forward(&prompt, 0)?;
        let prefill = started.elapsed().as_secs_f64();
        if prefill > 0.0 {
            self.prefill_rate.observe(prompt.len() as f64 / prefill);
        }
        let send = |ev: BackendEvent| events.send(Ok(ev)).is_ok();
        if !send(delta(Some("assistant"), Some(String::new()), None)) {
            return Ok(Outcome::Cancelled);
        }

        let decode_started = Instant::now();
        let mut sampler = Sampler::new(params);
        let mut detok = Detokenizer::new();
        let mut stop = StopMatcher::new(stops);
        let mut context = prompt.clone();
        let mut generated = 0usize;
        let finish_reason = loop {
            let token = sampler.sample(&mut logits, &context);
            generated += 1;
            self.stats.tokens_generated.fetch_add(1, Ordering::Relaxed);
            context.push(token);
            if self.eos_ids.contains(&token) {
                break "stop";
            }
            if let Some(piece) = detok.push(self.tokenizer, token)? {
                match stop.push(&piece) {
                    StopOutcome::Continue(text) => {
                        if !text.is_empty() && !send(delta(None, Some(text), None)) {
                            return Ok(Outcome::Cancelled);
                        }
                    }
                    StopOutcome::Stop(text) => {
                        if !text.is_empty() && !send(delta(None, Some(text), None)) {
                            return Ok(Outcome::Cancelled);
                        }
                        break "stop_sequence";
                    }
                }
            }
            if generated >= max_tokens {
                break "length";
            }
            if events.is_closed() {
                return Ok(Outcome::Cancelled);
            }
            logits = model.forward(&[token], prompt.len() + generated - 1)?;
        };

        let decode = decode_started.elapsed().as_secs_f64();
        if decode > 0.0 {
            self.decode_rate.observe(generated as f64 / decode);
        }
        // What is still held back: a character cut at the end, text that might have begun a stop
        // sequence. Unless a stop sequence was found, it belongs to the answer.
        let mut tail = String::new();
        let mut reason = finish_reason;
        if reason != "stop_sequence" {
            let rest = detok.finish(self.tokenizer)?;
            match stop.push(&rest) {
                StopOutcome::Continue(t) => tail.push_str(&t),
                StopOutcome::Stop(t) => {
                    tail.push_str(&t);
                    reason = "stop_sequence";
                }
            }
            if reason != "stop_sequence" {
                tail.push_str(&stop.finish());
            }
        }
        if !tail.is_empty() && !send(delta(None, Some(tail), None)) {
            return Ok(Outcome::Cancelled);
        }
        let reason = if reason == "length" { "length" } else { "stop" };
        // Counted before the last events go out, so whoever reads them sees the count.
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        send(delta(None, None, Some(reason)));
        // Every sampled token counts, the end-of-turn token included: it cost a model step, and
        // OpenAI and vLLM count it too (llama.cpp's server does not).
        send(BackendEvent::Usage(Usage::new(
            prompt.len() as u64,
            generated as u64,
        )));
        Ok(Outcome::Finished)
    }
}

fn delta(role: Option<&str>, content: Option<String>, finish: Option<&str>) -> BackendEvent {
    BackendEvent::Delta(ChoiceDelta {
        index: 0,
        role: role.map(str::to_owned),
        content,
        finish_reason: finish.map(str::to_owned),
        extra: Default::default(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    /// Answers with a fixed sequence of tokens, one per step, whatever the input.
    pub(crate) struct Script {
        pub tokens: Vec<u32>,
        pub vocab: usize,
        pub steps: usize,
    }

    impl LanguageModel for Script {
        fn forward(&mut self, _tokens: &[u32], _pos: usize) -> anyhow::Result<Vec<f32>> {
            let mut l = vec![0.0; self.vocab];
            let t = self.tokens.get(self.steps).copied().unwrap_or(0);
            l[t as usize] = 100.0;
            self.steps += 1;
            Ok(l)
        }
    }

    fn byte_tokenizer() -> Tokenizer {
        use tokenizers::decoders::byte_level::ByteLevel as Dec;
        use tokenizers::models::bpe::BPE;
        let vocab: ahash::AHashMap<String, u32> =
            crate::backends::candle::gguf_tokenizer::tests::byte_chars()
                .into_iter()
                .enumerate()
                .map(|(b, c)| (c.to_string(), b as u32))
                .collect();
        let mut t = Tokenizer::new(
            BPE::builder()
                .vocab_and_merges(vocab, vec![])
                .build()
                .unwrap(),
        );
        t.with_decoder(Some(Dec::default()));
        t
    }

    const EOS: u32 = 0;

    struct Run {
        events: Vec<BackendEvent>,
        outcome: Outcome,
        steps: usize,
    }

    fn run(answer: &[u8], max_tokens: usize, stops: &[&str]) -> Run {
        let tok = byte_tokenizer();
        let stats = Stats::default();
        let h = Histogram::with_opts(HistogramOpts::new("h", "h")).unwrap();
        let g = Generator {
            tokenizer: &tok,
            eos_ids: &[EOS],
            stats: &stats,
            prefill_rate: &h,
            decode_rate: &h,
        };
        let mut tokens: Vec<u32> = answer.iter().map(|&b| u32::from(b)).collect();
        tokens.push(EOS);
        let mut model = Script {
            tokens,
            vocab: 256,
            steps: 0,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outcome = g.run(
            &mut model,
            Job {
                prompt: vec![1, 2, 3],
                max_tokens,
                params: SamplingParams {
                    temperature: 0.0,
                    ..Default::default()
                },
                stops: stops.iter().map(|s| s.to_string()).collect(),
                events: tx,
            },
        );
        let mut events = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            events.push(ev.unwrap());
        }
        Run {
            events,
            outcome,
            steps: model.steps,
        }
    }

    fn text(events: &[BackendEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                BackendEvent::Delta(d) => d.content.clone(),
                _ => None,
            })
            .collect()
    }

    fn finish(events: &[BackendEvent]) -> (Option<String>, Usage) {
        let n = events.len();
        let BackendEvent::Delta(d) = &events[n - 2] else {
            panic!("no finish delta")
        };
        let BackendEvent::Usage(u) = &events[n - 1] else {
            panic!("no usage")
        };
        (d.finish_reason.clone(), *u)
    }

    #[test]
    fn role_first_then_text_then_finish_then_usage() {
        let r = run("héllo".as_bytes(), 100, &[]);
        assert_eq!(r.outcome, Outcome::Finished);
        assert_eq!(
            r.events[0],
            delta(Some("assistant"), Some(String::new()), None)
        );
        assert_eq!(text(&r.events), "héllo");
        let (reason, usage) = finish(&r.events);
        assert_eq!(reason.as_deref(), Some("stop"));
        // 6 bytes and the EOS token were generated.
        assert_eq!(usage, Usage::new(3, 7));
    }

    #[test]
    fn length_limit_counts_exactly() {
        let r = run(b"abcdefgh", 5, &[]);
        assert_eq!(text(&r.events), "abcde");
        let (reason, usage) = finish(&r.events);
        assert_eq!(reason.as_deref(), Some("length"));
        assert_eq!(usage.completion_tokens, 5);
        // Prefill plus one step per token after the first: no wasted step at the end.
        assert_eq!(r.steps, 5);
    }

    #[test]
    fn stop_sequence_across_tokens_is_not_sent() {
        let r = run(b"one\nUser: two", 100, &["\nUser:"]);
        assert_eq!(text(&r.events), "one");
        let (reason, usage) = finish(&r.events);
        assert_eq!(reason.as_deref(), Some("stop"));
        // Generation stopped at the ":" (9th token).
        assert_eq!(usage.completion_tokens, 9);
    }

    #[test]
    fn held_back_text_is_sent_when_no_stop_follows() {
        let r = run(b"a\nUs", 100, &["\nUser:"]);
        assert_eq!(text(&r.events), "a\nUs");
    }

    #[test]
    fn dropped_receiver_stops_within_one_step() {
        let tok = byte_tokenizer();
        let stats = Stats::default();
        let h = Histogram::with_opts(HistogramOpts::new("h", "h")).unwrap();
        let g = Generator {
            tokenizer: &tok,
            eos_ids: &[EOS],
            stats: &stats,
            prefill_rate: &h,
            decode_rate: &h,
        };
        // A model that drops the receiver during its third step.
        struct Dropper {
            inner: Script,
            rx: Option<mpsc::UnboundedReceiver<Result<BackendEvent>>>,
        }
        impl LanguageModel for Dropper {
            fn forward(&mut self, t: &[u32], p: usize) -> anyhow::Result<Vec<f32>> {
                if self.inner.steps == 2 {
                    self.rx = None;
                }
                self.inner.forward(t, p)
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut m = Dropper {
            inner: Script {
                tokens: vec![b'x'.into(); 1000],
                vocab: 256,
                steps: 0,
            },
            rx: Some(rx),
        };
        let outcome = g.run(
            &mut m,
            Job {
                prompt: vec![1],
                max_tokens: 1000,
                params: SamplingParams::default(),
                stops: vec![],
                events: tx,
            },
        );
        assert_eq!(outcome, Outcome::Cancelled);
        assert_eq!(m.inner.steps, 3);
        assert_eq!(stats.cancelled.load(Ordering::Relaxed), 1);
        assert_eq!(stats.tokens_generated.load(Ordering::Relaxed), 3);
    }
}
