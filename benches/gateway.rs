//! The gateway's per-request and per-token work, one piece at a time, naive next to tuned where
//! there is a choice: SSE framing and parsing, request decoding and validation, the rate-limit
//! check and the routing pick. `cargo bench --bench gateway`; figures go to docs/BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;

use sluice::api::sse::{ChunkEncoder, FrameBuffer};
use sluice::api::types::ChoiceDelta;
use sluice::api::validate;
use sluice::audit::AuditLog;
use sluice::backends::sse_parser::SseParser;
use sluice::backends::wire_chunk::{ChunkReader, WireChunk};
use sluice::config::Config;
use sluice::limits::RateLimits;
use sluice::metrics::Metrics;
use sluice::request_id::RequestId;
use sluice::routing::ModelRouter;

/// One OpenAI chunk event as an upstream sends it, for `tokens` tokens.
fn upstream_stream(tokens: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
    for i in 0..tokens {
        out.extend_from_slice(
            format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n").as_bytes(),
        );
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn sse_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_encode");
    let enc = ChunkEncoder::new("chatcmpl-0123456789abcdef", 1_700_000_000, "mock", false);
    let delta = ChoiceDelta {
        content: Some(" world".into()),
        ..Default::default()
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("chunk_encoder", |b| b.iter(|| enc.delta(black_box(&delta))));
    // As a stream renders: into its frame buffer, each event a slice of it.
    g.bench_function("chunk_encoder_into_frame_buffer", |b| {
        let mut out = FrameBuffer::default();
        b.iter(|| {
            enc.delta_into(black_box(&delta), out.room());
            out.take()
        })
    });
    // Naive: build a serde_json::Value tree for each chunk, then serialise it.
    g.bench_function("naive_json_value", |b| {
        b.iter(|| {
            let d = black_box(&delta);
            let v = json!({
                "id": "chatcmpl-0123456789abcdef",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000u64,
                "model": "mock",
                "system_fingerprint": null,
                "choices": [{
                    "index": d.index,
                    "delta": {"content": d.content},
                    "logprobs": null,
                    "finish_reason": d.finish_reason,
                }],
            });
            let mut out = b"data: ".to_vec();
            serde_json::to_writer(&mut out, &v).unwrap();
            out.extend_from_slice(b"\n\n");
            Bytes::from(out)
        })
    });
    g.finish();
}

fn sse_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_parse");
    let stream = upstream_stream(200);
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("parser_whole", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            let mut p = SseParser::default();
            out.clear();
            p.feed(black_box(&stream), &mut out).unwrap();
            out.len()
        })
    });
    // As the gateway reads: events borrowed from the input, nothing copied or allocated.
    g.bench_function("parser_whole_borrowed", |b| {
        b.iter(|| {
            let mut p = SseParser::default();
            let mut n = 0usize;
            p.feed_with(black_box(&stream), |e| n += e.data.len())
                .unwrap();
            n
        })
    });
    // As TCP delivers it in practice: pieces that cut lines anywhere.
    g.bench_function("parser_in_61_byte_pieces", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            let mut p = SseParser::default();
            out.clear();
            for piece in black_box(&stream).chunks(61) {
                p.feed(piece, &mut out).unwrap();
            }
            out.len()
        })
    });
    // Naive: accumulate into a String and split on blank lines, allocating every line.
    g.bench_function("naive_string_split", |b| {
        b.iter(|| {
            let mut buf = String::new();
            let mut events = Vec::new();
            for piece in black_box(&stream).chunks(61) {
                buf.push_str(&String::from_utf8_lossy(piece));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    let data: Vec<String> = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
                        .collect();
                    events.push(data.join("\n"));
                }
            }
            events.len()
        })
    });
    g.finish();
}

/// One token's chunk as OpenAI sends it (id, fingerprint, logprobs and all).
const OPENAI_CHUNK: &str = r#"{"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion.chunk","created":1733000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}],"usage":null}"#;

fn chunk_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("wire_chunk_parse", |b| {
        b.iter(|| WireChunk::parse(black_box(OPENAI_CHUNK)).unwrap())
    });
    // As a stream reads it: after the first chunk, the repeated beginning is recognised.
    g.bench_function("chunk_reader_in_stream", |b| {
        let mut reader = ChunkReader::default();
        b.iter(|| reader.parse(black_box(OPENAI_CHUNK)).unwrap())
    });
    // Naive: the same typed struct through serde_json alone.
    g.bench_function("serde_json_typed", |b| {
        b.iter(|| serde_json::from_str::<WireChunk>(black_box(OPENAI_CHUNK)).unwrap())
    });
    g.finish();
}

fn decode_validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_validate");
    let body = Bytes::from(
        serde_json::to_vec(&json!({
            "model": "mock",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Write a haiku about rivers and sluice gates."},
            ],
            "stream": true,
            "max_tokens": 256,
            "temperature": 0.7,
            "user": "user-1234",
        }))
        .unwrap(),
    );
    let limits = Config::from_toml(
        "[backends.b]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[models.mock]\nbackend = \"b\"\n",
        Path::new("bench.toml"),
        &|_| None,
    )
    .unwrap()
    .models["mock"]
        .limits;
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("decode_plain_first", |b| {
        b.iter(|| validate::decode(black_box(&body)).unwrap())
    });
    g.bench_function("naive_decode_with_path", |b| {
        b.iter(|| validate::decode_with_path(black_box(&body)).unwrap())
    });
    g.bench_function("decode_and_check", |b| {
        b.iter(|| {
            let mut r = validate::decode(black_box(&body)).unwrap();
            validate::check(&mut r, &limits).unwrap();
            r
        })
    });
    g.finish();
}

const LIMITED: &str = r#"
[backends.b]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
[models.mock]
backend = "b"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
[rate_limits]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
[keys.bench]
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
max_concurrent = 1000000
"#;

fn rate_limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit_admit");
    let metrics = Metrics::new();
    let on = Config::from_toml(LIMITED, Path::new("bench.toml"), &|_| None).unwrap();
    let limits = RateLimits::new(&on, metrics.rate_limited.clone());
    g.bench_function("key_model_global_limits", |b| {
        b.iter(|| {
            let a = limits.admit(Some("bench"), "mock", black_box(40)).unwrap();
            a.settle(Some(40), 5);
            a
        })
    });
    let off = Config::from_toml(
        "[backends.b]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[models.mock]\nbackend = \"b\"\n",
        Path::new("bench.toml"),
        &|_| None,
    )
    .unwrap();
    let none = RateLimits::new(&off, metrics.rate_limited.clone());
    g.bench_function("no_limits", |b| {
        b.iter(|| none.admit(None, "mock", black_box(40)).unwrap())
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing_plan");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, toml) in [
        (
            "one_target",
            "[models.m]\nbackend = \"a\"\n",
        ),
        (
            "three_weighted_targets_and_a_fallback",
            "[models.m]\ntargets = [{ backend = \"a\", weight = 80 }, { backend = \"b\", weight = 15 }, { backend = \"c\", weight = 5 }]\nfallbacks = [\"c\"]\n",
        ),
    ] {
        let text = format!(
            "[backends.a]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [backends.b]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [backends.c]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n{toml}"
        );
        let config = Config::from_toml(&text, Path::new("bench.toml"), &|_| None).unwrap();
        let metrics = Arc::new(Metrics::new());
        let backends = runtime
            .block_on(sluice::backends::build(&config, &metrics))
            .unwrap();
        let routers = ModelRouter::build_all(
            &config.models,
            &backends,
            &metrics,
            &Arc::new(AuditLog::default()),
        )
        .unwrap();
        let router = routers["m"].clone();
        g.bench_function(name, |b| b.iter(|| black_box(&router).plan()));
    }
    g.finish();
}

fn request_ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_id");
    // What every request pays twice (its x-request-id and its chatcmpl- id).
    g.bench_function("uuid_v4_simple", |b| {
        b.iter_batched(
            || (),
            |_| uuid::Uuid::new_v4().simple().to_string(),
            BatchSize::SmallInput,
        )
    });
    // The gateway's: a shared header value, used by every layer without a copy.
    g.bench_function("request_id_generate", |b| b.iter(RequestId::generate));
    g.finish();
}

criterion_group!(
    benches,
    sse_encode,
    sse_parse,
    chunk_decode,
    decode_validate,
    rate_limit,
    routing,
    request_ids
);
criterion_main!(benches);
