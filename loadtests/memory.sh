#!/usr/bin/env bash
# Memory: the gateway's resident set when idle, and per open idle stream.
#
#   bash loadtests/memory.sh
#
# The gateway serves only a remote model (no local model is loaded). Its RSS is read after start,
# after a warm-up of a few hundred requests, and with STREAMS (10000) streams held open. The
# streams are idle: the model `stall` is routed to the mock's `fault:stall:0`, which sends the
# role chunk and then nothing, so each stream holds a client connection, an upstream connection
# and the gateway's state for it. Each proxied stream holds two sockets in the gateway, so the
# number of streams is capped by the open-files limit (see the note printed when it is).
# With UPSTREAM_HTTP2=true every stream shares one h2c connection to the upstream (see lib.sh).
source "$(dirname "$0")/lib.sh"

STREAMS="${STREAMS:-10000}"
HOLD="${HOLD:-60s}"

build
raise_nofile 65536
# Two sockets per stream in the gateway (one with an h2c upstream), plus its listeners, pool and
# files.
SOCKETS_PER_STREAM=2
[[ "${UPSTREAM_HTTP2:-false}" == true ]] && SOCKETS_PER_STREAM=1
MAX_STREAMS=$((($(ulimit -n) - 200) / SOCKETS_PER_STREAM))
if ((STREAMS > MAX_STREAMS)); then
    echo "note: open-files limit $(ulimit -n) allows $MAX_STREAMS proxied streams, not $STREAMS; measuring $MAX_STREAMS" >&2
    STREAMS=$MAX_STREAMS
fi

MOCK_PORT="$(free_port)"
start_mock "$MOCK_PORT"
PORT="$(free_port)"
sluice_config "$WORK/on.toml" "$PORT" "$MOCK_PORT" on '
[models.stall]
backend = "upstream"
upstream_model = "fault:stall:0"'
start_sluice "$WORK/on.toml" "$PORT"
sleep 1
RSS_START="$(rss_kb "$SLUICE_PID")"
"$BIN/loadgen" run --url "http://127.0.0.1:$PORT/v1/chat/completions" -c 8 --requests 2000 \
    --warmup 0s --duration 30s --stream --key "$BENCH_KEY" --label warmup >/dev/null 2>&1
sleep 1
RSS_WARM="$(rss_kb "$SLUICE_PID")"

machine >&2
"$BIN/loadgen" run --url "http://127.0.0.1:$PORT/v1/chat/completions" -c "$STREAMS" --hold \
    --duration "$HOLD" --model stall --key "$BENCH_KEY" --label hold \
    >/dev/null 2>"$WORK/hold.log" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
for _ in $(seq 1 600); do
    grep -q '^READY' "$WORK/hold.log" && break
    kill -0 "$LOAD_PID" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q '^READY' "$WORK/hold.log"; then
    echo "the streams did not all open:" >&2
    cat "$WORK/hold.log" >&2
    exit 1
fi
sleep 2
RSS_HOLD="$(rss_kb "$SLUICE_PID")"
OPEN_FDS="$(ls "/proc/$SLUICE_PID/fd" | wc -l)"
stop "$LOAD_PID"
sleep 2
RSS_AFTER="$(rss_kb "$SLUICE_PID")"

echo
UPSTREAM_PROTO="HTTP/1.1"
[[ "$SOCKETS_PER_STREAM" == 1 ]] && UPSTREAM_PROTO="h2c, one connection"
echo "### Memory (no local model; $STREAMS idle streams; upstream $UPSTREAM_PROTO)"
echo
machine | sed 's/^/    /'
echo
echo "| measure | value |"
echo "|---|---|"
echo "| RSS after start | $((RSS_START / 1024)) MiB ($RSS_START KiB) |"
echo "| RSS after 2,000 requests | $((RSS_WARM / 1024)) MiB ($RSS_WARM KiB) |"
echo "| RSS with $STREAMS open idle streams | $((RSS_HOLD / 1024)) MiB ($RSS_HOLD KiB; $OPEN_FDS open files) |"
echo "| per open stream | $(((RSS_HOLD - RSS_WARM) * 1024 / STREAMS)) bytes |"
echo "| RSS after the streams closed | $((RSS_AFTER / 1024)) MiB ($RSS_AFTER KiB) |"
