//! `loadgen run`: N connections, each a task sending requests back to back (closed loop), or at a
//! fixed total rate (open loop, `--rate`), or holding one stream open (`--hold`).
//!
//! Closed loop is how the overhead is measured: every connection always has one request in
//! flight, so latency and throughput are those of the system under test at that concurrency. The
//! open loop is for the rate-limit scenario, where the offered rate must not depend on how fast
//! refusals come back. Hold mode opens streams and keeps them open, for the memory scenario.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::parse_duration;
use crate::stats::Stats;

/// Streams opened at once in hold mode: enough to open ten thousand in seconds, few enough that
/// the accept backlog of the server under test never overflows.
const HOLD_OPENING: usize = 128;

/// `loadgen run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The chat completions URL (`http://127.0.0.1:PORT/v1/chat/completions`).
    #[arg(long)]
    url: Uri,
    /// Concurrent keep-alive connections, one request in flight on each.
    #[arg(long, short = 'c', default_value_t = 1)]
    connections: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Requests sent and not recorded before the window opens.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Stop after this many recorded requests (the duration still bounds the run).
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: this many requests per second in total, whatever the responses.
    #[arg(long)]
    rate: Option<f64>,
    /// Hold mode: open one stream per connection and keep it open until the window ends; prints
    /// `READY <n>` on standard error once every stream has its first event.
    #[arg(long)]
    hold: bool,
    /// Ask for SSE (`"stream": true`) and record time to first token and inter-token gaps.
    #[arg(long)]
    stream: bool,
    /// The `model` of the request.
    #[arg(long, default_value = "mock")]
    model: String,
    /// Sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "LOADGEN_KEY", hide_env_values = true)]
    key: Option<String>,
    /// `max_tokens` of the request.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// The prompt text.
    #[arg(long, default_value = "Say hello.")]
    prompt: String,
    /// Each request's deadline.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// A name for this run in the result line and the reports.
    #[arg(long, default_value = "run")]
    label: String,
    /// Append the result line (JSON) to this file; it is always printed on standard output too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What every connection task reads.
struct Plan {
    addr: SocketAddr,
    uri: Uri,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    body: Bytes,
    stream: bool,
    hold: bool,
    connections: usize,
    rate: Option<f64>,
    requests: Option<u64>,
    request_timeout: Duration,
    /// When sending starts (warm-up included).
    start: Instant,
    /// When recording starts.
    window: Instant,
    /// When the run ends.
    end: Instant,
    /// Recorded requests started so far, for `--requests`.
    issued: AtomicU64,
    /// The next open-loop slot.
    slots: AtomicU64,
    /// Hold mode: streams with their first event in.
    opened: AtomicUsize,
    opening: Semaphore,
}

/// One exchange, as seen by the client.
struct Exchange {
    status: u16,
}

/// How many tokens an SSE read carries: events with a non-empty `"content"` string. The role
/// chunk that opens a stream has `"content":""` and is not a token. A read may hold several events
/// when the sender wrote them together.
fn tokens_in(data: &[u8]) -> usize {
    const NEEDLE: &[u8] = b"\"content\":\"";
    let mut n = 0;
    let mut rest = data;
    while let Some(at) = rest.windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let after = at + NEEDLE.len();
        if rest.get(after).is_some_and(|b| *b != b'"') {
            n += 1;
        }
        rest = &rest[after..];
    }
    n
}

/// Counts tokens in whole SSE events. A read can end inside an event (a gateway that writes a
/// burst of events at once, split by TCP), so the unfinished tail waits for the next read, and
/// its token counts when its event is complete: when the client could use it.
#[derive(Default)]
struct EventTokens {
    tail: Vec<u8>,
}

impl EventTokens {
    fn feed(&mut self, data: &[u8]) -> usize {
        let whole = |bytes: &[u8]| {
            bytes
                .windows(2)
                .rposition(|w| w == b"\n\n")
                .map(|at| at + 2)
        };
        if self.tail.is_empty() {
            let Some(end) = whole(data) else {
                self.tail.extend_from_slice(data);
                return 0;
            };
            self.tail.extend_from_slice(&data[end..]);
            return tokens_in(&data[..end]);
        }
        self.tail.extend_from_slice(data);
        let Some(end) = whole(&self.tail) else {
            return 0;
        };
        let n = tokens_in(&self.tail[..end]);
        self.tail.drain(..end);
        n
    }
}

/// Runs the load and prints the result line.
pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.uri_scheme_is_not_http() {
        bail!("only http:// URLs are supported");
    }
    let authority = args.url.authority().context("the URL has no host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let addr = (authority.host(), port)
        .to_socket_addrs()
        .context("resolving the URL's host")?
        .next()
        .context("the URL's host has no address")?;
    let mut body = json!({
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
    });
    let stream = args.stream || args.hold;
    if stream {
        body["stream"] = true.into();
    }
    if let Some(m) = args.max_tokens {
        body["max_tokens"] = m.into();
    }
    let auth = match &args.key {
        Some(k) => Some(HeaderValue::from_str(&format!("Bearer {k}")).context("--key")?),
        None => None,
    };
    let start = Instant::now();
    let warmup = if args.hold {
        Duration::ZERO
    } else {
        args.warmup
    };
    let window = start + warmup;
    let plan = Arc::new(Plan {
        addr,
        uri: args
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()?,
        host: HeaderValue::from_str(authority.as_str())?,
        auth,
        body: Bytes::from(serde_json::to_vec(&body)?),
        stream,
        hold: args.hold,
        connections: args.connections,
        rate: args.rate,
        requests: args.requests,
        request_timeout: args.request_timeout,
        start,
        window,
        end: window + args.duration,
        issued: AtomicU64::new(0),
        slots: AtomicU64::new(0),
        opened: AtomicUsize::new(0),
        opening: Semaphore::new(HOLD_OPENING),
    });

    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(connection(plan.clone())))
        .collect();
    let mut total = Stats::new()?;
    for t in tasks {
        total.merge(t.await??);
    }
    let measured = Instant::now().min(plan.end) - plan.window;
    let mut line = total.to_json(if plan.requests.is_some() {
        measured
    } else {
        args.duration
    });
    line["label"] = args.label.clone().into();
    line["url"] = args.url.to_string().into();
    line["connections"] = args.connections.into();
    line["stream"] = plan.stream.into();
    line["hold"] = args.hold.into();
    if let Some(r) = args.rate {
        line["offered_rps"] = r.into();
    }
    let text = serde_json::to_string(&line)?;
    println!("{text}");
    eprintln!("{}", crate::report::one_line(&line));
    if let Some(path) = &args.out {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{text}")?;
    }
    Ok(())
}

impl RunArgs {
    fn uri_scheme_is_not_http(&self) -> bool {
        self.url.scheme_str().is_some_and(|s| s != "http")
    }
}

/// One connection: sends requests until the run ends, reconnecting after a failure.
async fn connection(plan: Arc<Plan>) -> anyhow::Result<Stats> {
    let mut stats = Stats::new()?;
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        if Instant::now() >= plan.end {
            break;
        }
        if let Some(rate) = plan.rate {
            let slot = plan.slots.fetch_add(1, Ordering::Relaxed);
            let at = plan.start + Duration::from_secs_f64(slot as f64 / rate);
            if at >= plan.end {
                break;
            }
            tokio::time::sleep_until(at).await;
        }
        let recorded = Instant::now() >= plan.window;
        if recorded {
            if let Some(max) = plan.requests {
                if plan.issued.fetch_add(1, Ordering::Relaxed) >= max {
                    break;
                }
            }
        }
        let permit = if plan.hold {
            plan.opening.acquire().await.ok()
        } else {
            None
        };
        let alive = match &mut sender {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            match connect(plan.addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    stats.error(format!("connect: {e}"));
                    sender = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(conn) = sender.as_mut() else {
            continue;
        };
        let started = Instant::now();
        let deadline = if plan.hold {
            plan.end
        } else {
            started + plan.request_timeout
        };
        let sink = if recorded { Some(&mut stats) } else { None };
        let result =
            tokio::time::timeout_at(deadline, exchange(conn, &plan, started, sink, permit))
                .await
                .unwrap_or_else(|_| {
                    if plan.hold {
                        Ok(Exchange { status: 200 })
                    } else {
                        Err("timed out".to_owned())
                    }
                });
        let done = Instant::now();
        match result {
            Ok(ex) if recorded => {
                stats.latency(done - started);
                let at = (done <= plan.end).then(|| done - plan.window);
                stats.response(ex.status, at);
            }
            Ok(_) => {}
            Err(e) => {
                sender = None;
                if recorded {
                    stats.error(e);
                }
            }
        }
        if plan.hold {
            break;
        }
    }
    Ok(stats)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and reads its whole body, noting tokens as they arrive.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    plan: &Plan,
    started: Instant,
    mut sink: Option<&mut Stats>,
    permit: Option<tokio::sync::SemaphorePermit<'_>>,
) -> Result<Exchange, String> {
    let mut req = Request::post(plan.uri.clone())
        .header(HOST, plan.host.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(auth) = &plan.auth {
        req = req.header(AUTHORIZATION, auth.clone());
    }
    let req = req
        .body(Full::new(plan.body.clone()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut permit = permit;
    let mut last_token: Option<Instant> = None;
    let mut events = EventTokens::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if plan.hold && permit.take().is_some() {
            let n = plan.opened.fetch_add(1, Ordering::Relaxed) + 1;
            if n == plan.connections {
                eprintln!("READY {n}");
            }
        }
        let tokens = if plan.stream { events.feed(data) } else { 0 };
        if tokens == 0 {
            continue;
        }
        let now = Instant::now();
        if let Some(s) = sink.as_deref_mut() {
            match last_token {
                None => s.ttft(now - started),
                Some(prev) => s.gap(now - prev),
            }
            // Tokens that arrived in the same read reached the client together: no gap.
            for _ in 1..tokens {
                s.gap(Duration::ZERO);
            }
        }
        last_token = Some(now);
    }
    Ok(Exchange { status })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_non_empty_content() {
        assert_eq!(
            tokens_in(br#"data: {"choices":[{"delta":{"content":"hi"}}]}"#),
            1
        );
        assert_eq!(
            tokens_in(br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            0
        );
        assert_eq!(tokens_in(b"data: [DONE]"), 0);
        let two =
            b"data: {\"delta\":{\"content\":\"a\"}}\n\ndata: {\"delta\":{\"content\":\"b\"}}\n\n";
        assert_eq!(tokens_in(two), 2);
    }

    #[test]
    fn a_token_split_across_reads_counts_once_its_event_is_whole() {
        let stream: &[u8] =
            b"data: {\"delta\":{\"content\":\"a\"}}\n\ndata: {\"delta\":{\"content\":\"b\"}}\n\n";
        for cut in 1..stream.len() {
            let mut events = EventTokens::default();
            let first = events.feed(&stream[..cut]);
            let second = events.feed(&stream[cut..]);
            assert_eq!(first + second, 2, "cut at {cut}");
            let first_event_end = stream.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
            assert_eq!(first, usize::from(cut >= first_event_end), "cut at {cut}");
        }
    }
}
