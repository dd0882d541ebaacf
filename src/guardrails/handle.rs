//! What the chat handler calls.
//!
//! [`GuardrailsHandle`] is a cheap clone that points at the policy being served. Each request
//! takes the policy once (`check_input`, `output_scanner`), so a reload in the middle of a request
//! never changes the rules it is judged by. Every decision is counted and, when an audit log is
//! configured, written there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderValue;

use super::audit::{AuditRecord, DecisionLog};
use super::compile::{Kind, Policy};
use super::metrics::GuardrailMetrics;
use super::policy::PolicyError;
use super::scan::{Finding, Pushed, Scanner};
use super::{Action, Direction};
use crate::api::types::{ChatRequest, Content};
use crate::error::Error;
use crate::prompts::PromptTag;
use crate::request_id::RequestId;

/// Who a request is for: the labels of its audit records and the scope of rules.
///
/// Both scanners of a request keep a copy, so its fields are shared, not copied.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub request_id: RequestId,
    /// The client-facing model name.
    pub model: Arc<str>,
    /// The API key's configured name (never the key itself).
    pub key_name: Option<Arc<str>>,
    /// The prompt the request was built from, named in its audit records.
    pub prompt: Option<Arc<PromptTag>>,
}

/// One decision, for the caller's logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub rule: String,
    pub kind: Kind,
    pub entity: &'static str,
    pub action: Action,
    pub direction: Direction,
    /// The message index (input only).
    pub message: Option<usize>,
    /// Byte offsets in that message's text (a content part's text for multi-part content), or
    /// in the whole output.
    pub start: usize,
    pub end: usize,
}

/// The result of an input check that did not block.
#[derive(Debug, Clone)]
pub struct InputOutcome {
    /// The policy the request was judged by (for `x-sluice-policy-version`).
    pub version: Arc<str>,
    /// Every redaction and flag.
    pub decisions: Vec<Decision>,
    /// Whether any message text was rewritten.
    pub redacted: bool,
}

/// The policy and where evidence goes.
pub(crate) struct Inner {
    pub current: ArcSwap<Policy>,
    pub dir: Option<PathBuf>,
    pub metrics: Option<GuardrailMetrics>,
    pub audit: Option<DecisionLog>,
    /// Serialises reloads; requests never take it.
    pub reload_lock: std::sync::Mutex<()>,
}

/// The gateway's handle on its guardrails.
#[derive(Clone)]
pub struct GuardrailsHandle {
    pub(crate) inner: Arc<Inner>,
}

/// Scans one response as it streams. Made by [`GuardrailsHandle::output_scanner`].
///
/// An answer is several texts: the content of each choice, and each text field a delta carries
/// (a tool call's arguments, `refusal`, `reasoning_content`, …). Each is a stream of its own, held
/// back and redacted on its own, so a value split across deltas of one field is still found and a
/// value is never made by joining two fields. The main stream (choice 0's content) is always
/// there; the others are opened when their first text arrives ([`open`](Self::open)).
pub struct OutputScanner {
    scanner: Scanner,
    /// The other streams of the answer, by the id [`open`](Self::open) gave.
    streams: Vec<Scanner>,
    /// The rule actions for this response, for the streams opened later.
    actions: Vec<Option<Action>>,
    evidence: Evidence,
    elapsed: Duration,
    decisions: Vec<Decision>,
    done: bool,
}

/// Where a scanner reports.
struct Evidence {
    policy: Arc<Policy>,
    ctx: Ctx,
    metrics: Option<GuardrailMetrics>,
    audit: Option<DecisionLog>,
}

// === impl Ctx ===

impl Ctx {
    pub fn new(request_id: impl Into<RequestId>, model: &str, key_name: Option<&str>) -> Self {
        Ctx {
            request_id: request_id.into(),
            model: model.into(),
            key_name: key_name.map(Arc::from),
            prompt: None,
        }
    }

    /// The same context, for a request built from `prompt`.
    pub fn with_prompt(mut self, prompt: Option<PromptTag>) -> Self {
        self.prompt = prompt.map(Arc::new);
        self
    }
}

// === impl GuardrailsHandle ===

impl GuardrailsHandle {
    /// Serves a compiled policy, without metrics, audit log or a directory to reload from.
    pub fn new(policy: Policy) -> Self {
        Self::build(Arc::new(policy), None, None, None)
    }

    /// Loads `dir`, refusing it unless it compiles and every rule's tests pass; registers the
    /// metric families in `metrics` and writes decisions to `audit` when given.
    pub fn load(
        dir: &Path,
        metrics: Option<GuardrailMetrics>,
        audit: Option<DecisionLog>,
    ) -> Result<Self, PolicyError> {
        let policy = Arc::new(Policy::load(dir)?);
        let failures = super::tools::run_tests(&policy);
        if let Some(first) = failures.first() {
            return Err(PolicyError::new(
                dir.display().to_string(),
                format!("{} rule test(s) fail; first:\n{first}", failures.len()),
            ));
        }
        // What compiling and testing it allocated is free now.
        crate::heap::release_free();
        Ok(Self::build(policy, Some(dir.to_path_buf()), metrics, audit))
    }

    fn build(
        policy: Arc<Policy>,
        dir: Option<PathBuf>,
        metrics: Option<GuardrailMetrics>,
        audit: Option<DecisionLog>,
    ) -> Self {
        if let Some(m) = &metrics {
            m.set_version(policy.version());
        }
        GuardrailsHandle {
            inner: Arc::new(Inner {
                current: ArcSwap::from(policy),
                dir,
                metrics,
                audit,
                reload_lock: std::sync::Mutex::new(()),
            }),
        }
    }

    /// The policy being served now: this thread's copy of it (see [`super::local`]).
    pub fn policy(&self) -> Arc<Policy> {
        super::local::copy_of(&self.inner.current.load())
    }

    /// The version of the policy being served now (for `x-sluice-policy-version`).
    pub fn version(&self) -> Arc<str> {
        self.inner.current.load().version_arc()
    }

    /// The serving policy's version as a response header value.
    pub fn version_header(&self) -> Option<HeaderValue> {
        self.inner.current.load().version_header()
    }

    /// Checks a request's limits and every message's text. A block is a 400 with code
    /// `content_filter` and the rule's message; a redaction rewrites the text in place.
    /// Scanning is CPU work proportional to the prompt: for prompts of hundreds of kilobytes,
    /// call this from `spawn_blocking`.
    pub fn check_input(&self, req: &mut ChatRequest, ctx: &Ctx) -> Result<InputOutcome, Error> {
        let policy = self.policy();
        let started = Instant::now();
        let ev = Evidence {
            policy: Arc::clone(&policy),
            ctx: ctx.clone(),
            metrics: self.inner.metrics.clone(),
            audit: self.inner.audit.clone(),
        };
        let result = check_input(&ev, req);
        if let Some(m) = &self.inner.metrics {
            m.scan_seconds
                .with_label_values(&["input"])
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// A scanner for one response to `ctx`.
    pub fn output_scanner(&self, ctx: &Ctx) -> OutputScanner {
        let policy = self.policy();
        let actions = policy.actions_for(Direction::Output, &ctx.model, ctx.key_name.as_deref());
        OutputScanner {
            scanner: Scanner::new(Arc::clone(&policy), Direction::Output, actions.clone()),
            streams: Vec::new(),
            actions,
            evidence: Evidence {
                policy,
                ctx: ctx.clone(),
                metrics: self.inner.metrics.clone(),
                audit: self.inner.audit.clone(),
            },
            elapsed: Duration::ZERO,
            decisions: Vec::new(),
            done: false,
        }
    }
}

fn check_input(ev: &Evidence, req: &mut ChatRequest) -> Result<InputOutcome, Error> {
    let policy = &ev.policy;
    let mut decisions = Vec::new();
    check_limits(ev, req, &mut decisions)?;
    let actions = policy.actions_for(Direction::Input, &ev.ctx.model, ev.ctx.key_name.as_deref());
    let mut scan = InputScan {
        ev,
        actions,
        decisions: &mut decisions,
        redacted: false,
    };
    if scan.actions.iter().any(Option::is_some) {
        for (i, msg) in req.messages.iter_mut().enumerate() {
            match &mut msg.content {
                None => {}
                Some(Content::Text(s)) => scan.text(s, Some(i))?,
                Some(Content::Parts(parts)) => {
                    for text in parts.iter_mut().filter_map(|p| p.text.as_mut()) {
                        scan.text(text, Some(i))?;
                    }
                }
            }
            // `name`, an assistant's `tool_calls` (their arguments are text the model reads
            // back), `refusal` and anything newer.
            for value in msg.extra.values_mut() {
                scan.json(value, Some(i))?;
            }
        }
        // `user`, `metadata`, tool definitions, a `prediction`, …: every text the request
        // carries goes to the upstream, so every text is judged.
        for value in req.extra.values_mut() {
            scan.json(value, None)?;
        }
    }
    let redacted = scan.redacted;
    Ok(InputOutcome {
        version: policy.version_arc(),
        decisions,
        redacted,
    })
}

/// Judges the texts of one request.
struct InputScan<'a> {
    ev: &'a Evidence,
    actions: Vec<Option<Action>>,
    decisions: &'a mut Vec<Decision>,
    /// Whether any text was rewritten.
    redacted: bool,
}

impl InputScan<'_> {
    /// Scans one text of message `message` (`None`: a field of the request itself), rewriting
    /// it where a rule redacts; a block is the error to answer with.
    fn text(&mut self, text: &mut String, message: Option<usize>) -> Result<(), Error> {
        let policy = &self.ev.policy;
        let (out, findings) = Scanner::scan_text(
            Arc::clone(policy),
            Direction::Input,
            self.actions.clone(),
            text,
        );
        for f in &findings {
            self.decisions
                .push(self.ev.report(Direction::Input, f, message));
        }
        if out.blocked {
            let rule = findings
                .iter()
                .rev()
                .find(|f| f.action == Action::Block)
                .map(|f| &policy.rules[f.rule]);
            return Err(block_error(rule.map(|r| r.message.clone())));
        }
        if out.release != *text {
            *text = out.release;
            self.redacted = true;
        }
        Ok(())
    }

    /// Scans every string in `value` (object keys are names, not text).
    fn json(&mut self, value: &mut serde_json::Value, message: Option<usize>) -> Result<(), Error> {
        use serde_json::Value;
        match value {
            Value::String(s) => self.text(s, message),
            Value::Array(items) => items.iter_mut().try_for_each(|v| self.json(v, message)),
            Value::Object(o) => o.values_mut().try_for_each(|v| self.json(v, message)),
            _ => Ok(()),
        }
    }
}

fn block_error(message: Option<String>) -> Error {
    Error::InvalidRequest {
        message: message.unwrap_or_else(|| "The request was refused by the content policy.".into()),
        param: None,
        code: Some("content_filter"),
    }
}

/// Estimated tokens: one per four characters, rounded up.
pub fn estimate_tokens(chars: usize) -> usize {
    chars.div_ceil(4)
}

fn check_limits(
    ev: &Evidence,
    req: &mut ChatRequest,
    out: &mut Vec<Decision>,
) -> Result<(), Error> {
    let policy = &ev.policy;
    let chars: usize = req.messages.iter().map(|m| m.text().chars().count()).sum();
    for (idx, rule) in policy.rules.iter().enumerate() {
        if rule.kind != Kind::Limits
            || !rule.input
            || !rule.in_scope(&ev.ctx.model, ev.ctx.key_name.as_deref())
        {
            continue;
        }
        let l = rule.limits;
        let prompt_over = l.max_prompt_chars.is_some_and(|m| chars > m)
            || l.max_prompt_tokens
                .is_some_and(|m| estimate_tokens(chars) > m)
            || l.max_messages.is_some_and(|m| req.messages.len() > m);
        let completion_over = l
            .max_completion_tokens
            .is_some_and(|m| req.requested_max_tokens().is_some_and(|t| t > m));
        if !prompt_over && !completion_over {
            continue;
        }
        let action = rule.effective_action();
        let f = Finding {
            rule: idx,
            entity: "limit",
            start: 0,
            end: 0,
            action,
            excerpt: String::new(),
        };
        out.push(ev.report(Direction::Input, &f, None));
        match action {
            Action::Block => return Err(block_error(Some(rule.message.clone()))),
            Action::Redact => {
                // Only completion limits may redact (checked at compile): clamp the budget.
                if let Some(m) = l.max_completion_tokens {
                    if req.max_completion_tokens.is_some_and(|t| t > m) {
                        req.max_completion_tokens = Some(m);
                    }
                    if req.max_tokens.is_some_and(|t| t > m) {
                        req.max_tokens = Some(m);
                    }
                }
            }
            Action::Flag => {}
        }
    }
    Ok(())
}

// === impl Evidence ===

impl Evidence {
    /// Counts, audits and describes one finding.
    fn report(&self, dir: Direction, f: &Finding, message: Option<usize>) -> Decision {
        let rule = &self.policy.rules[f.rule];
        if let Some(m) = &self.metrics {
            m.triggers
                .with_label_values(&[rule.id.as_str(), f.action.as_str(), dir.as_str()])
                .inc();
        }
        if let Some(a) = &self.audit {
            a.record(AuditRecord {
                time: AuditRecord::now(),
                request_id: self.ctx.request_id.to_string(),
                rule: rule.id.clone(),
                action: f.action.as_str(),
                direction: dir.as_str(),
                entity: f.entity,
                model: self.ctx.model.to_string(),
                key: self.ctx.key_name.as_deref().map(str::to_owned),
                policy_version: self.policy.version().to_string(),
                excerpt: f.excerpt.clone(),
                prompt: self.ctx.prompt.as_deref().cloned(),
            });
        }
        tracing::debug!(
            request_id = %self.ctx.request_id,
            rule = %rule.id,
            action = f.action.as_str(),
            direction = dir.as_str(),
            entity = f.entity,
            "guardrail decision"
        );
        Decision {
            rule: rule.id.clone(),
            kind: rule.kind,
            entity: f.entity,
            action: f.action,
            direction: dir,
            message,
            start: f.start,
            end: f.end,
        }
    }
}

// === impl OutputScanner ===

impl OutputScanner {
    /// Adds a piece of the answer; returns the text to send now. When `blocked` is set, send
    /// `release` and end the stream with `finish_reason: "content_filter"`; later pushes
    /// release nothing.
    pub fn push(&mut self, text: &str) -> Pushed {
        self.push_owned(text.to_owned())
    }

    /// As [`push`](Self::push), releasing into `text`'s own allocation.
    pub fn push_owned(&mut self, text: String) -> Pushed {
        let mut clock = Instant::now();
        self.push_timed(text, &mut clock)
    }

    /// As [`push_owned`](Self::push_owned), timed from `clock`, a time the caller read just
    /// before; `clock` is then set to when the scan ended. A stream reads the clock once per
    /// token for its own accounts anyway, and this way the scan's timing shares those reads.
    pub fn push_timed(&mut self, text: String, clock: &mut Instant) -> Pushed {
        let out = self.scanner.push_owned(text);
        self.lap(clock);
        self.collect(out.blocked);
        out
    }

    /// Ends the answer: returns the text still held back (a stream's last bytes).
    pub fn finish(&mut self) -> Pushed {
        let mut clock = Instant::now();
        self.finish_timed(&mut clock)
    }

    /// As [`finish`](Self::finish), timed as [`push_timed`](Self::push_timed) is.
    pub fn finish_timed(&mut self, clock: &mut Instant) -> Pushed {
        let out = self.scanner.finish();
        self.lap(clock);
        self.collect(true);
        out
    }

    /// Opens another stream of the answer; its id is for [`push_to`](Self::push_to) and
    /// [`finish_stream`](Self::finish_stream).
    pub fn open(&mut self) -> usize {
        self.streams.push(Scanner::new(
            Arc::clone(&self.evidence.policy),
            Direction::Output,
            self.actions.clone(),
        ));
        self.streams.len() - 1
    }

    /// As [`push_timed`](Self::push_timed), for the stream `id`.
    pub fn push_to(&mut self, id: usize, text: String, clock: &mut Instant) -> Pushed {
        let Some(s) = self.streams.get_mut(id) else {
            return Pushed::default();
        };
        let out = s.push_owned(text);
        let findings = s.take_findings();
        self.lap(clock);
        self.report(findings);
        out
    }

    /// Ends the stream `id`: returns what it still held.
    pub fn finish_stream(&mut self, id: usize, clock: &mut Instant) -> Pushed {
        let Some(s) = self.streams.get_mut(id) else {
            return Pushed::default();
        };
        let out = s.finish();
        let findings = s.take_findings();
        self.lap(clock);
        self.report(findings);
        out
    }

    /// Scans a text that arrives whole (a tool call's id or name): what to send instead.
    pub fn scan_whole(&mut self, text: &str, clock: &mut Instant) -> Pushed {
        let (out, findings) = Scanner::scan_text(
            Arc::clone(&self.evidence.policy),
            Direction::Output,
            self.actions.clone(),
            text,
        );
        self.lap(clock);
        self.report(findings);
        out
    }

    /// Adds the time since `clock` to the scan time and moves `clock` to now.
    fn lap(&mut self, clock: &mut Instant) {
        let now = Instant::now();
        self.elapsed += now.saturating_duration_since(*clock);
        *clock = now;
    }

    /// Whether the answer was blocked, in any of its streams.
    pub fn blocked(&self) -> bool {
        self.blocked_by().is_some()
    }

    /// The message of the rule that blocked.
    pub fn block_message(&self) -> Option<&str> {
        self.blocked_by()
            .map(|i| self.evidence.policy.rules[i].message.as_str())
    }

    fn blocked_by(&self) -> Option<usize> {
        self.scanner
            .blocked_by()
            .or_else(|| self.streams.iter().find_map(Scanner::blocked_by))
    }

    /// Every decision so far.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    /// The policy version this response is judged by.
    pub fn version(&self) -> &str {
        self.evidence.policy.version()
    }

    /// Bytes received but not yet released, in every stream.
    pub fn held(&self) -> usize {
        self.scanner.held() + self.streams.iter().map(Scanner::held).sum::<usize>()
    }

    fn report(&mut self, findings: Vec<Finding>) {
        for f in findings {
            let d = self.evidence.report(Direction::Output, &f, None);
            self.decisions.push(d);
        }
    }

    fn collect(&mut self, ended: bool) {
        let findings = self.scanner.take_findings();
        self.report(findings);
        if ended && !self.done {
            self.done = true;
            if let Some(m) = &self.evidence.metrics {
                m.scan_seconds
                    .with_label_values(&["output"])
                    .observe(self.elapsed.as_secs_f64());
            }
        }
    }
}
