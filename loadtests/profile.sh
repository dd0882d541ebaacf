#!/usr/bin/env bash
# Profiles the gateway under the overhead scenario's load (32 connections, streaming, keys and
# limits on) with perf, and prints where its CPU time goes.
#
#   bash loadtests/profile.sh
#
# Environment: CONNS (32), SECONDS_RECORDED (8), STREAM (1), KEEP_WORK (keep perf.data).
# Falls back to valgrind's callgrind when perf cannot count instructions here.
source "$(dirname "$0")/lib.sh"

CONNS="${CONNS:-32}"
RECORD="${SECONDS_RECORDED:-8}"
STREAM="${STREAM:-1}"

build
raise_nofile 65536
if ! perf stat -e instructions true >/dev/null 2>&1; then
    if ! command -v valgrind >/dev/null; then
        log "installing valgrind (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
    fi
    USE_CALLGRIND=1
fi

MOCK_PORT="$(free_port)"
start_mock "$MOCK_PORT"
PORT="$(free_port)"
sluice_config "$WORK/on.toml" "$PORT" "$MOCK_PORT" on
STREAM_FLAG=()
[[ "$STREAM" == 1 ]] && STREAM_FLAG=(--stream)
LOAD=("$BIN/loadgen" run --url "http://127.0.0.1:$PORT/v1/chat/completions" -c "$CONNS"
    --warmup 1s "${STREAM_FLAG[@]}" --key "$BENCH_KEY" --label sluice-on)
machine >&2

if [[ -n "${USE_CALLGRIND:-}" ]]; then
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
        "$BIN/sluice" serve --config "$WORK/on.toml" >"$WORK/sluice.log" 2>&1 &
    PIDS+=("$!")
    SLUICE_PID=$!
    wait_port "$PORT"
    "${LOAD[@]}" --duration "${RECORD}s" >/dev/null
    stop "$SLUICE_PID"
    callgrind_annotate --inclusive=no "$WORK/callgrind.out" 2>/dev/null | head -60
    exit 0
fi

start_sluice "$WORK/on.toml" "$PORT"
"${LOAD[@]}" --duration "$((RECORD + 3))s" >/dev/null &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
sleep 2
perf record -F 499 --call-graph dwarf,32768 -p "$SLUICE_PID" -o "$WORK/perf.data" -- sleep "$RECORD" \
    >/dev/null 2>&1
wait "$LOAD_PID" || true

echo "### Flat profile (self time, top 40 symbols)"
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -40
echo
echo "### Inclusive time of the gateway's own frames (top 40)"
perf report -i "$WORK/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9]' | grep -E 'sluice|tracing|prometheus|serde|uuid|hyper|h2|tokio' | head -40
