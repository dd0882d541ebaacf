//! Output guardrails on the delta stream.
//!
//! Every text an answer carries passes the policy before it is framed, so streamed and collected
//! answers are filtered by the same code: the content of every choice (an upstream may send
//! several even when one was asked for), and every text a delta carries besides (a tool call's
//! `function.arguments`, the legacy `function_call`, `refusal`, `reasoning_content` or any other
//! string field, an audio answer's transcript). Each of these is a stream of its own, per choice
//! and per tool call: text that could still become part of a match is held back and released
//! (redacted if need be) as soon as it cannot, in a delta of the same shape, and no value is made
//! by joining two streams. What arrives whole (a tool call's id, type and name, anything nested
//! deeper) is scanned whole in the delta that carries it; an audio answer's `data` is not text
//! and is not scanned. A block ends the answer with `finish_reason: "content_filter"` on every
//! choice still open, without releasing a byte of the blocked span.
//!
//! An answer that is content alone costs what it did before: choice 0's content goes straight to
//! the main stream, and a delta with no other field is not walked.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};
use smallvec::SmallVec;

use crate::api::types::ChoiceDelta;
use crate::guardrails::{OutputScanner, Pushed};
use crate::routing::{ModelRouter, Target};

/// What the filter lets through for one backend delta. Almost always one delta or none, which
/// need no allocation; the end of an answer or a block can make up to three.
pub enum Deltas {
    One(Option<ChoiceDelta>),
    Many(std::vec::IntoIter<ChoiceDelta>),
}

impl Deltas {
    fn one(d: ChoiceDelta) -> Self {
        Deltas::One(Some(d))
    }

    fn none() -> Self {
        Deltas::One(None)
    }

    fn many(out: Vec<ChoiceDelta>) -> Self {
        Deltas::Many(out.into_iter())
    }
}

impl Iterator for Deltas {
    type Item = ChoiceDelta;

    fn next(&mut self) -> Option<ChoiceDelta> {
        match self {
            Deltas::One(d) => d.take(),
            Deltas::Many(it) => it.next(),
        }
    }
}

/// Which text of a choice a stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    /// `content` (of a choice other than 0: choice 0's content is the main stream).
    Content,
    /// A string field of the delta itself: `refusal`, `reasoning_content`, …
    Text(String),
    /// `tool_calls[i].function.arguments`, by the tool call's `index`.
    ToolArguments(u64),
    /// `function_call.arguments`, the legacy form of a tool call.
    FunctionArguments,
    /// `audio.transcript`.
    Transcript,
}

/// One open stream of the answer other than the main one.
struct Stream {
    choice: u32,
    field: Field,
    /// The scanner's id for it ([`OutputScanner::open`]).
    id: usize,
}

/// Filters one response's deltas; a no-op without a policy.
pub struct OutputFilter {
    scanner: Option<OutputScanner>,
    /// Every stream but choice 0's content, in the order they opened (a handful at most).
    streams: Vec<Stream>,
    /// Each choice seen, and whether it has finished: a block ends those still open.
    choices: SmallVec<[(u32, bool); 2]>,
    blocked: bool,
    /// Where a block is reported, for the serving target's canary guard.
    served_by: Option<(Arc<ModelRouter>, Arc<Target>, Instant)>,
}

fn is_empty(d: &ChoiceDelta) -> bool {
    d.role.is_none()
        && d.content.as_deref().is_none_or(str::is_empty)
        && d.finish_reason.is_none()
        && d.extra.is_empty()
}

fn content(index: u32, text: String) -> ChoiceDelta {
    ChoiceDelta {
        index,
        content: Some(text),
        ..ChoiceDelta::default()
    }
}

/// A delta that carries `text` in `field` of `choice`, in the shape the field arrives in.
fn delta_for(choice: u32, field: &Field, text: String) -> ChoiceDelta {
    let (key, value) = match field {
        Field::Content => return content(choice, text),
        Field::Text(k) => (k.clone(), Value::String(text)),
        Field::ToolArguments(i) => (
            "tool_calls".to_owned(),
            json!([{ "index": i, "function": { "arguments": text } }]),
        ),
        Field::FunctionArguments => ("function_call".to_owned(), json!({ "arguments": text })),
        Field::Transcript => ("audio".to_owned(), json!({ "transcript": text })),
    };
    let mut extra = Map::new();
    extra.insert(key, value);
    ChoiceDelta {
        index: choice,
        extra,
        ..ChoiceDelta::default()
    }
}

/// The stream a string at `path` under the delta's field `top` belongs to: `Some(None)` when it
/// arrives whole, `None` when it is not text.
fn stream_of(top: &str, tool: Option<u64>, path: &[&str]) -> Option<Option<Field>> {
    Some(match (top, path) {
        (_, []) => Some(Field::Text(top.to_owned())),
        ("tool_calls", ["function", "arguments"]) => tool.map(Field::ToolArguments),
        ("function_call", ["arguments"]) => Some(Field::FunctionArguments),
        ("audio", ["transcript"]) => Some(Field::Transcript),
        ("audio", ["data"]) => return None,
        _ => None,
    })
}

// === impl OutputFilter ===

impl OutputFilter {
    /// A filter over `scanner`, or a pass-through without one.
    pub fn new(scanner: Option<OutputScanner>) -> Self {
        OutputFilter {
            scanner,
            streams: Vec::new(),
            choices: SmallVec::new(),
            blocked: false,
            served_by: None,
        }
    }

    /// Reports a block to `target`'s canary guard, with the time since `started`.
    pub fn report_to(
        mut self,
        router: Arc<ModelRouter>,
        target: Arc<Target>,
        started: Instant,
    ) -> Self {
        self.served_by = Some((router, target, started));
        self
    }

    /// Whether a rule blocked the answer: nothing more may be sent but the end of the stream.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// The deltas to send for one backend delta (none, one, or released text then the finish).
    /// `clock` is a time the caller read just before (the delta's arrival); where the filter
    /// scans, it times the scan from there and moves `clock` to when the scan ended, which is
    /// when the deltas may leave.
    pub fn filter(&mut self, mut d: ChoiceDelta, clock: &mut Instant) -> Deltas {
        let Some(scanner) = self.scanner.as_mut() else {
            return Deltas::one(d);
        };
        if self.blocked {
            return Deltas::none();
        }
        if !self.choices.iter().any(|c| c.0 == d.index) {
            self.choices.push((d.index, false));
        }
        let mut blocked = false;
        if let Some(text) = d.content.take().filter(|t| !t.is_empty()) {
            let pushed = if d.index == 0 {
                scanner.push_timed(text, clock)
            } else {
                let id = stream_id(&mut self.streams, scanner, d.index, Field::Content);
                scanner.push_to(id, text, clock)
            };
            d.content = Some(pushed.release);
            blocked = pushed.blocked;
        } else if d.role.is_some() {
            d.content = d.content.or(Some(String::new()));
        }
        if !blocked && !d.extra.is_empty() {
            let mut walk = Walk {
                scanner,
                streams: &mut self.streams,
                choice: d.index,
                clock,
            };
            blocked = walk.fields(&mut d.extra);
        }
        if blocked {
            d.finish_reason = None;
            let mut out = Vec::with_capacity(2);
            self.block(d, &mut out);
            return Deltas::many(out);
        }
        if d.finish_reason.is_some() {
            let mut out = Vec::with_capacity(3);
            let finish = d.finish_reason.take();
            let index = d.index;
            if !is_empty(&d) {
                out.push(d);
            }
            match self.finish_choice(index, clock, &mut out) {
                Ok(mut tail) => {
                    tail.finish_reason = finish;
                    out.push(tail);
                }
                Err(released) => self.block(released, &mut out),
            }
            return Deltas::many(out);
        }
        if !is_empty(&d) || d.role.is_some() {
            Deltas::one(d)
        } else {
            Deltas::none()
        }
    }

    /// At the end of a backend stream: releases what the choices that sent no finish reason
    /// still held.
    pub fn end(&mut self) -> Vec<ChoiceDelta> {
        let mut out = Vec::new();
        if self.blocked || self.scanner.is_none() {
            return out;
        }
        let open: SmallVec<[u32; 2]> = self.choices.iter().filter(|c| !c.1).map(|c| c.0).collect();
        let mut clock = Instant::now();
        for choice in open {
            match self.finish_choice(choice, &mut clock, &mut out) {
                Ok(tail) if !is_empty(&tail) => out.push(tail),
                Ok(_) => {}
                Err(released) => {
                    self.block(released, &mut out);
                    break;
                }
            }
        }
        out
    }

    /// Ends every stream of `choice`: what its fields held goes to `out`, and its content's
    /// last bytes come back as the delta to end the choice with (empty content dropped). A
    /// block is an `Err` with what was released before it.
    fn finish_choice(
        &mut self,
        choice: u32,
        clock: &mut Instant,
        out: &mut Vec<ChoiceDelta>,
    ) -> Result<ChoiceDelta, ChoiceDelta> {
        let Some(scanner) = self.scanner.as_mut() else {
            return Ok(ChoiceDelta {
                index: choice,
                ..ChoiceDelta::default()
            });
        };
        let mut last = Pushed::default();
        let mut i = 0;
        while i < self.streams.len() {
            if self.streams[i].choice != choice {
                i += 1;
                continue;
            }
            let s = self.streams.remove(i);
            let pushed = scanner.finish_stream(s.id, clock);
            if s.field == Field::Content {
                last = pushed;
            } else if pushed.blocked {
                return Err(delta_for(choice, &s.field, pushed.release));
            } else if !pushed.release.is_empty() {
                out.push(delta_for(choice, &s.field, pushed.release));
            }
        }
        let pushed = if choice == 0 {
            scanner.finish_timed(clock)
        } else {
            last
        };
        let mut tail = content(choice, pushed.release);
        if pushed.blocked {
            return Err(tail);
        }
        tail.content = tail.content.filter(|t| !t.is_empty());
        if let Some(c) = self.choices.iter_mut().find(|c| c.0 == choice) {
            c.1 = true;
        }
        Ok(tail)
    }

    fn block(&mut self, released: ChoiceDelta, out: &mut Vec<ChoiceDelta>) {
        self.blocked = true;
        if let Some((router, target, started)) = &self.served_by {
            router.guardrail_tripped(target, started.elapsed());
        }
        if !is_empty(&released) {
            out.push(released);
        }
        if self.choices.is_empty() {
            self.choices.push((0, false));
        }
        for c in self.choices.iter_mut().filter(|c| !c.1) {
            c.1 = true;
            out.push(ChoiceDelta {
                index: c.0,
                finish_reason: Some("content_filter".into()),
                ..ChoiceDelta::default()
            });
        }
    }
}

/// The id of `field`'s stream in `choice`, opened on first use.
fn stream_id(
    streams: &mut Vec<Stream>,
    scanner: &mut OutputScanner,
    choice: u32,
    field: Field,
) -> usize {
    if let Some(s) = streams
        .iter()
        .find(|s| s.choice == choice && s.field == field)
    {
        return s.id;
    }
    let id = scanner.open();
    streams.push(Stream { choice, field, id });
    id
}

/// Calls `scan` on each entry of `map` until one blocks; then removes the entries after it,
/// which were not scanned. Returns whether one blocked.
fn each_until_blocked(
    map: &mut Map<String, Value>,
    mut scan: impl FnMut(&str, &mut Value) -> bool,
) -> bool {
    let mut seen: Vec<String> = Vec::new();
    let mut blocked = false;
    for (key, value) in map.iter_mut() {
        seen.push(key.clone());
        if scan(key, value) {
            blocked = true;
            break;
        }
    }
    if blocked {
        map.retain(|k, _| seen.contains(k));
    }
    blocked
}

/// One walk over the fields of a delta, scanning every string in it.
struct Walk<'a> {
    scanner: &'a mut OutputScanner,
    streams: &'a mut Vec<Stream>,
    choice: u32,
    clock: &'a mut Instant,
}

// === impl Walk ===

impl Walk<'_> {
    /// Scans every field; returns true on a block, with the fields after the blocked text
    /// removed (they were not scanned).
    fn fields(&mut self, extra: &mut Map<String, Value>) -> bool {
        each_until_blocked(extra, |key, value| match value {
            Value::Array(items) if key == "tool_calls" => self.tool_calls(items),
            v => self.value(key, None, &mut Vec::new(), v),
        })
    }

    fn tool_calls(&mut self, items: &mut Vec<Value>) -> bool {
        for pos in 0..items.len() {
            let tool = items[pos]
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            if self.value("tool_calls", Some(tool), &mut Vec::new(), &mut items[pos]) {
                items.truncate(pos + 1);
                return true;
            }
        }
        false
    }

    /// Scans `v`, found at `path` under the delta's field `top` (in tool call `tool`).
    fn value(
        &mut self,
        top: &str,
        tool: Option<u64>,
        path: &mut Vec<String>,
        v: &mut Value,
    ) -> bool {
        match v {
            Value::String(s) => {
                let at: SmallVec<[&str; 4]> = path.iter().map(String::as_str).collect();
                let pushed = match stream_of(top, tool, &at) {
                    None => return false,
                    Some(Some(field)) => {
                        let id = stream_id(self.streams, self.scanner, self.choice, field);
                        self.scanner.push_to(id, std::mem::take(s), self.clock)
                    }
                    Some(None) => {
                        let p = self.scanner.scan_whole(s, self.clock);
                        if p.release == *s && !p.blocked {
                            return false;
                        }
                        p
                    }
                };
                *s = pushed.release;
                pushed.blocked
            }
            Value::Array(items) => {
                for pos in 0..items.len() {
                    path.push(pos.to_string());
                    let blocked = self.value(top, tool, path, &mut items[pos]);
                    path.pop();
                    if blocked {
                        items.truncate(pos + 1);
                        return true;
                    }
                }
                false
            }
            Value::Object(o) => each_until_blocked(o, |k, child| {
                path.push(k.to_owned());
                let blocked = self.value(top, tool, path, child);
                path.pop();
                blocked
            }),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::api::sse::Collector;
    use crate::guardrails::scan::Scanner;
    use crate::guardrails::{Ctx, Direction, GuardrailsHandle};

    fn guard() -> GuardrailsHandle {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("guardrails");
        GuardrailsHandle::load(&dir, None, None).unwrap()
    }

    /// What the whole text gives: the release and whether it blocked.
    fn whole(guard: &GuardrailsHandle, text: &str) -> (String, bool) {
        let policy = guard.policy();
        let actions = policy.actions_for(Direction::Output, "m", None);
        let (out, _) = Scanner::scan_text(policy, Direction::Output, actions, text);
        (out.release, out.blocked)
    }

    /// Runs `deltas` through a filter and collects the answer, as a non-streaming response is.
    fn run(guard: &GuardrailsHandle, deltas: Vec<ChoiceDelta>) -> Value {
        let mut filter = OutputFilter::new(Some(guard.output_scanner(&Ctx::new("r", "m", None))));
        let mut collector = Collector::new();
        let mut clock = Instant::now();
        for d in deltas {
            for out in filter.filter(d, &mut clock) {
                collector.push(out);
            }
            if filter.blocked() {
                break;
            }
        }
        for out in filter.end() {
            collector.push(out);
        }
        let body = collector.finish("id", 0, "m");
        serde_json::from_slice(&body).unwrap()
    }

    fn delta(index: u32, extra: Value) -> ChoiceDelta {
        let Value::Object(extra) = extra else {
            unreachable!()
        };
        ChoiceDelta {
            index,
            extra,
            ..ChoiceDelta::default()
        }
    }

    fn finish(index: u32, reason: &str) -> ChoiceDelta {
        ChoiceDelta {
            index,
            finish_reason: Some(reason.into()),
            ..ChoiceDelta::default()
        }
    }

    /// A tool call whose arguments arrive in `pieces`, then its finish.
    fn tool_call(pieces: &[&str]) -> Vec<ChoiceDelta> {
        let mut out = vec![delta(
            0,
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": ""}}]}),
        )];
        for p in pieces {
            out.push(delta(
                0,
                json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
            ));
        }
        out.push(finish(0, "tool_calls"));
        out
    }

    /// Choice 0 says `ok`; choice 1's content arrives in `pieces`.
    fn second_choice(pieces: &[&str]) -> Vec<ChoiceDelta> {
        let mut out = vec![content(0, "ok".into())];
        for p in pieces {
            out.push(content(1, (*p).to_owned()));
        }
        out.push(finish(1, "stop"));
        out.push(finish(0, "stop"));
        out
    }

    fn arguments(answer: &Value) -> (String, String) {
        let choice = &answer["choices"][0];
        let args = choice["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        (
            args,
            choice["finish_reason"].as_str().unwrap_or("").to_owned(),
        )
    }

    fn second(answer: &Value) -> (String, String) {
        let choice = answer["choices"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["index"] == 1))
            .cloned()
            .unwrap_or(Value::Null);
        (
            choice["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            choice["finish_reason"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// Checks both shapes against the whole text, split in two at every character boundary and
    /// one character at a time.
    fn check(guard: &GuardrailsHandle, text: &str) {
        let (release, blocked) = whole(guard, text);
        let reason = |normal: &str| if blocked { "content_filter" } else { normal }.to_owned();
        let mut splits: Vec<Vec<&str>> = (0..=text.len())
            .filter(|i| text.is_char_boundary(*i))
            .map(|i| vec![&text[..i], &text[i..]])
            .collect();
        splits.push(
            text.char_indices()
                .map(|(i, c)| &text[i..i + c.len_utf8()])
                .collect(),
        );
        for pieces in &splits {
            let got = arguments(&run(guard, tool_call(pieces)));
            assert_eq!(got, (release.clone(), reason("tool_calls")), "{pieces:?}");
            let got = second(&run(guard, second_choice(pieces)));
            assert_eq!(got, (release.clone(), reason("stop")), "{pieces:?}");
        }
    }

    const PARTS: &[&str] = &[
        "hello ",
        "the ",
        "{\"to\":\"",
        "jane.doe@example.com",
        "\",\"card\":\"",
        "4111 1111 1111 1111",
        " AKIAIOSFODNN7EXAMPLE",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
        "\"}",
        " 2024",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn tool_call_arguments_and_a_second_choice_stream_as_the_whole_text_does(
            parts in prop::collection::vec(prop::sample::select(PARTS), 0..8)
        ) {
            check(&guard(), &parts.concat());
        }
    }

    #[test]
    fn planted_values_in_every_field_are_redacted_three_characters_at_a_time() {
        let guard = guard();
        let planted =
            "mail jane.doe@example.com key AKIAIOSFODNN7EXAMPLE card 4111 1111 1111 1111 end";
        let pieces: Vec<String> = planted
            .chars()
            .collect::<Vec<_>>()
            .chunks(3)
            .map(|c| c.iter().collect())
            .collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let expected = "mail [EMAIL] key [SECRET] card [CREDIT_CARD] end";
        let answer = run(&guard, tool_call(&pieces));
        assert_eq!(arguments(&answer).0, expected);
        let answer = run(&guard, second_choice(&pieces));
        assert_eq!(second(&answer).0, expected);
        for field in ["refusal", "reasoning_content", "some_new_text_field"] {
            let mut deltas: Vec<ChoiceDelta> = pieces
                .iter()
                .map(|p| delta(0, json!({ field: p })))
                .collect();
            deltas.push(finish(0, "stop"));
            let answer = run(&guard, deltas);
            assert_eq!(answer["choices"][0]["message"][field], expected, "{field}");
        }
        // The legacy `function_call`, and a value that arrives whole (a tool call's name).
        let mut deltas: Vec<ChoiceDelta> = pieces
            .iter()
            .map(|p| delta(0, json!({"function_call": {"arguments": p}})))
            .collect();
        deltas.insert(
            0,
            delta(0, json!({"function_call": {"name": "bob@example.com"}})),
        );
        deltas.push(finish(0, "function_call"));
        let answer = run(&guard, deltas);
        let call = &answer["choices"][0]["message"]["function_call"];
        assert_eq!(call["arguments"], expected);
        assert_eq!(call["name"], "[EMAIL]");
    }

    #[test]
    fn a_block_in_a_tool_call_ends_every_open_choice() {
        let guard = guard();
        let mut deltas = vec![content(1, "fine ".into())];
        deltas.extend(tool_call(&[
            "{\"k\":\"-----BEGIN RSA PRIVATE KEY-----\nMIIE",
            "\n-----END RSA PRIVATE KEY-----\"}",
        ]));
        let answer = run(&guard, deltas);
        let (args, reason) = arguments(&answer);
        assert_eq!(reason, "content_filter");
        assert!(!args.contains("BEGIN") && !args.contains("MIIE"), "{args}");
        assert_eq!(second(&answer).1, "content_filter");
    }

    #[test]
    fn content_alone_opens_no_other_stream() {
        let guard = guard();
        let mut filter = OutputFilter::new(Some(guard.output_scanner(&Ctx::new("r", "m", None))));
        let mut clock = Instant::now();
        for t in ["Hello ", "there"] {
            let _ = filter.filter(content(0, t.into()), &mut clock).count();
        }
        assert!(filter.streams.is_empty());
    }
}
