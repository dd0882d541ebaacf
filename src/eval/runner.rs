//! Running a suite: every case through the gateway, scored, folded into a [`Record`].
//!
//! Cases run concurrently up to a bound (`--concurrency`): a suite should finish in the time its
//! slowest cases take, but not be the load test that trips the gateway's own rate limits. A case
//! is sent again only when it failed in transport (connect refused or reset, 502, 503, 504),
//! with a doubling pause, since that failure says nothing about the model; a 4xx is the gateway's
//! answer and is scored as it is. The judge's requests are retried the same way.

use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::client::{CallError, Outcome};
use super::dataset::Case;
use super::record::{
    CaseRecord, DatasetRef, Record, ScoreRecord, Served, SuiteRef, Summary, FORMAT,
};
use super::scorers::{Answer, Blocked, Verdict};
use super::suite::Suite;
use super::GatewayClient;

/// How a suite is run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Cases in flight at once (at least 1).
    pub concurrency: usize,
    /// Further attempts after a transport failure.
    pub retries: u32,
    /// The pause before the first retry; doubled before each next one.
    pub backoff: Duration,
    /// Draw a progress bar on standard error (only when it is a terminal).
    pub progress: bool,
    /// What the record names as the target.
    pub target: String,
    /// The SHA-256 of the weights that served, when the runner knows them (in-process, a local
    /// model that declares one).
    pub weights_sha256: Option<String>,
    /// Who runs the suite, for the record.
    pub run_by: Option<String>,
}

/// The last attempt's result, how many attempts it took and how long the last one ran.
struct Sent {
    result: Result<Outcome, CallError>,
    attempts: u32,
    latency: Duration,
}

/// Runs every case of `suite` against `client`.
pub async fn run(suite: &Suite, client: &GatewayClient, opts: &RunOptions) -> Record {
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let progress = progress_bar(opts.progress, suite.dataset.cases.len());
    let mut results: Vec<(usize, CaseRecord)> =
        futures_util::stream::iter(suite.dataset.cases.iter().enumerate())
            .map(|(i, case)| async move { (i, run_case(suite, client, opts, case).await) })
            .buffer_unordered(opts.concurrency.max(1))
            .inspect(|(_, c)| {
                if let Some(bar) = &progress {
                    bar.inc(1);
                    if !c.passed {
                        bar.set_message(format!("last failed: {}", c.id));
                    }
                }
            })
            .collect()
            .await;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    results.sort_by_key(|(i, _)| *i);
    let cases: Vec<CaseRecord> = results.into_iter().map(|(_, c)| c).collect();
    let names: Vec<String> = suite.scorers.iter().map(|s| s.name.clone()).collect();
    Record {
        format: FORMAT,
        suite: SuiteRef {
            name: suite.name.clone(),
            file: suite.path.display().to_string(),
            sha256: suite.sha256.clone(),
        },
        dataset: DatasetRef {
            file: suite.dataset_path.display().to_string(),
            sha256: suite.dataset.sha256.clone(),
            cases: cases.len(),
        },
        model: suite.model.clone(),
        target: opts.target.clone(),
        served: Some(Served::of(&cases, opts.weights_sha256.clone())),
        request: suite.request.clone(),
        prompts: cases
            .iter()
            .filter_map(|c| c.prompt.as_ref())
            .map(|p| (p.id.clone(), p.version.clone()))
            .collect(),
        run_by: opts.run_by.clone(),
        sluice_version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        duration_ms: ms(started.elapsed()),
        summary: Summary::of(&cases, &names, suite.threshold),
        cases,
    }
}

async fn run_case(
    suite: &Suite,
    client: &GatewayClient,
    opts: &RunOptions,
    case: &Case,
) -> CaseRecord {
    let sent = send(client, &request_body(suite, case), opts).await;
    let mut record = CaseRecord {
        id: case.id.clone(),
        prompt: None,
        tags: case.tags.clone(),
        passed: false,
        output: String::new(),
        finish_reason: None,
        status: None,
        error: None,
        blocked: None,
        latency_ms: ms(sent.latency),
        attempts: sent.attempts,
        prompt_tokens: None,
        completion_tokens: None,
        scores: Vec::new(),
        served: None,
    };
    // `None` when there is nothing to score: every scorer fails with this reason.
    let unscorable = match sent.result {
        Ok(Outcome::Answer(c)) => {
            record.status = Some(200);
            record.blocked =
                (c.finish_reason.as_deref() == Some("content_filter")).then_some(Blocked::Output);
            record.output = c.text;
            record.finish_reason = c.finish_reason;
            record.prompt_tokens = c.prompt_tokens;
            record.completion_tokens = c.completion_tokens;
            record.prompt = c.prompt;
            record.served = Some(c.served);
            None
        }
        Ok(Outcome::Refused {
            status,
            code,
            message,
        }) => {
            record.status = Some(status);
            record.error = Some(message.clone());
            if status == 400 && code.as_deref() == Some("content_filter") {
                record.blocked = Some(Blocked::Input);
                None
            } else {
                Some(format!("refused with {status}: {message}"))
            }
        }
        Err(e) => {
            record.error = Some(e.message.clone());
            Some(format!("no answer: {}", e.message))
        }
    };
    let answer = Answer {
        text: &record.output,
        blocked: record.blocked,
    };
    let mut scores = Vec::with_capacity(suite.scorers.len());
    for scorer in suite.scorers.iter().filter(|s| s.applies(case)) {
        let verdict = match (&unscorable, scorer.judge()) {
            (Some(why), _) => Verdict::fail(why.clone()),
            (None, Some(_)) if answer.blocked.is_some() => {
                Verdict::fail("blocked: nothing to judge")
            }
            (None, Some(judge)) => {
                let sent = send(client, &judge.request(case, answer.text), opts).await;
                match sent.result {
                    Ok(Outcome::Answer(reply)) => judge.verdict(&reply.text),
                    Ok(Outcome::Refused {
                        status, message, ..
                    }) => Verdict::fail(format!("the judge was refused with {status}: {message}")),
                    Err(e) => Verdict::fail(format!("the judge did not answer: {e}")),
                }
            }
            (None, None) => scorer.score(case, &answer),
        };
        scores.push(ScoreRecord {
            scorer: scorer.name.clone(),
            score: verdict.score,
            passed: verdict.passed,
            detail: verdict.detail,
        });
    }
    record.passed = scores.iter().all(|s| s.passed);
    record.scores = scores;
    record
}

/// The chat request for a case: the suite's model and `[request]` settings, not streamed.
pub fn request_body(suite: &Suite, case: &Case) -> Value {
    let mut body = json!({
        "model": suite.model,
        "stream": false,
        "messages": case.messages,
    });
    if let (Some(obj), Ok(Value::Object(settings))) =
        (body.as_object_mut(), serde_json::to_value(&suite.request))
    {
        obj.extend(settings);
    }
    // A gateway prompt: the gateway renders the messages; the case's own, if any, follow them.
    if let (Some(id), Some(vars), Some(obj)) =
        (&suite.prompt_id, &case.variables, body.as_object_mut())
    {
        obj.insert("prompt".into(), json!({"id": id, "variables": vars}));
        if case.messages.is_empty() {
            obj.remove("messages");
        }
    }
    body
}

/// Sends with retries on transport failures.
async fn send(client: &GatewayClient, body: &Value, opts: &RunOptions) -> Sent {
    let mut pause = opts.backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let start = Instant::now();
        let result = client.chat(body).await;
        let latency = start.elapsed();
        match result {
            Err(e) if e.retryable && attempts <= opts.retries => {
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2);
            }
            result => {
                return Sent {
                    result,
                    attempts,
                    latency,
                }
            }
        }
    }
}

fn progress_bar(wanted: bool, len: usize) -> Option<indicatif::ProgressBar> {
    if !wanted || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} cases {elapsed} {msg}")
    {
        bar.set_style(style);
    }
    Some(bar)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_upstream::{MockConfig, MockUpstream};

    /// A suite for `model` over two cases whose reference the mock's default answer contains.
    fn suite(model: &str) -> Suite {
        let dir = std::env::temp_dir().join(format!("sluice-runner-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let case = r#"{"messages":[{"role":"user","content":"hi"}],"reference":"mock upstream"}"#;
        std::fs::write(
            dir.join("set.jsonl"),
            format!("{case}\n{case}\n").replace("\"reference\"", "\"tags\":[\"t\"],\"reference\""),
        )
        .unwrap();
        let text = format!(
            "dataset = \"set.jsonl\"\nmodel = \"{model}\"\nthreshold = 1\n[[scorer]]\ntype = \"contains\"\n"
        );
        let path = dir.join("s.toml");
        std::fs::write(&path, text).unwrap();
        let s = Suite::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        s
    }

    fn opts() -> RunOptions {
        RunOptions {
            concurrency: 1,
            retries: 2,
            backoff: Duration::from_millis(1),
            progress: false,
            target: "test".into(),
            weights_sha256: None,
            run_by: None,
        }
    }

    async fn run_against(mock: &MockUpstream, model: &str) -> Record {
        let client = GatewayClient::new(&mock.base_url(), None, Duration::from_secs(10)).unwrap();
        run(&suite(model), &client, &opts()).await
    }

    #[tokio::test]
    async fn answers_are_scored_in_order() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let r = run_against(&mock, "mock").await;
        assert_eq!(r.summary.passed, 2);
        assert_eq!(r.cases[0].id, "line-1");
        assert_eq!(r.cases[1].id, "line-2");
        assert_eq!(r.cases[0].tags, ["t"]);
        assert_eq!(r.cases[0].output, mock.config().answer_text());
        assert_eq!(r.cases[0].attempts, 1);
        assert!(r.summary.threshold_met);
    }

    #[tokio::test]
    async fn transport_failures_are_retried_and_4xx_are_not() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let r = run_against(&mock, "fault:status:503").await;
        // Two cases, each sent once and retried twice.
        assert_eq!(mock.requests(), 6);
        assert_eq!(r.cases[0].attempts, 3);
        assert_eq!(r.summary.errors, 2);
        assert!(!r.summary.threshold_met);
        assert!(r.cases[0].scores[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("no answer"));

        for status in [400, 429, 500] {
            let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
            let r = run_against(&mock, &format!("fault:status:{status}")).await;
            assert_eq!(mock.requests(), 2, "{status}");
            assert_eq!(r.cases[0].status, Some(status));
            assert_eq!(r.cases[0].attempts, 1);
            assert_eq!(r.summary.passed, 0);
        }
    }

    #[test]
    fn the_request_carries_the_suite_settings() {
        let mut s = suite("m");
        s.request.temperature = Some(0.0);
        s.request.max_tokens = Some(8);
        let body = request_body(&s, &s.dataset.cases[0]);
        assert_eq!(body["model"], "m");
        assert_eq!(body["stream"], false);
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["max_tokens"], 8);
        assert!(body.get("seed").is_none());
        assert_eq!(body["messages"][0]["content"], "hi");
    }

    #[test]
    fn a_suite_naming_a_gateway_prompt_sends_the_cases_variables() {
        let dir = std::env::temp_dir().join(format!("sluice-runner-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("set.jsonl"),
            "{\"variables\":{\"customer\":\"Ada\"},\"reference\":\"x\"}\n{\"reference\":\"x\"}\n",
        )
        .unwrap();
        let text = "dataset = \"set.jsonl\"\nmodel = \"m\"\nprompt_id = \"greet\"\nthreshold = 1\n[[scorer]]\ntype = \"contains\"\n";
        std::fs::write(dir.join("s.toml"), text).unwrap();
        // A case without `variables` has nothing to fill the prompt with.
        let e = Suite::load(&dir.join("s.toml")).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("needs `variables`"),
            "{e}"
        );
        std::fs::write(
            dir.join("set.jsonl"),
            "{\"variables\":{\"customer\":\"Ada\"},\"reference\":\"x\"}\n",
        )
        .unwrap();
        let s = Suite::load(&dir.join("s.toml")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let body = request_body(&s, &s.dataset.cases[0]);
        assert_eq!(
            body["prompt"],
            json!({"id": "greet", "variables": {"customer": "Ada"}})
        );
        assert!(body.get("messages").is_none(), "{body}");
        assert_eq!(body["model"], "m");
    }
}
