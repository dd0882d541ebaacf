#!/usr/bin/env bash
# Realistic streaming: what the gateway adds to time to first token and to the gap between tokens
# when many long streams are open at once.
#
#   bash loadtests/streaming.sh
#
# The mock upstream answers 200 tokens, 20 ms apart (and 20 ms before the first). STREAMS (1000)
# concurrent streams, each connection asking for ROUNDS (2) answers in a row, are measured
# directly, through nginx, and through Sluice with keys and rate limits on.
#
# Environment: STREAMS, ROUNDS, SLUICE_BEFORE and SLUICE_BEFORE_REPO (a second sluice binary and
# its checkout, measured as `sluice-before` or SLUICE_BEFORE_LABEL, as in overhead.sh).
source "$(dirname "$0")/lib.sh"

STREAMS="${STREAMS:-1000}"
ROUNDS="${ROUNDS:-2}"

build
need_nginx
raise_nofile 65536

start_proxied --ttft-ms 20 --gap-ms 20 --tokens 200
TARGETS=("direct $MOCK_PORT -" "nginx $NGINX_PORT -" "sluice-on $ON_PORT $BENCH_KEY")
start_before "$MOCK_PORT"

RESULTS="$WORK/streaming.jsonl"
machine >&2
for t in "${TARGETS[@]}"; do
    read -r label port key <<<"$t"
    KEY_ARGS=()
    [[ "$key" != - ]] && KEY_ARGS=(--key "$key")
    "$BIN/loadgen" run --url "http://127.0.0.1:$port/v1/chat/completions" -c "$STREAMS" \
        --stream --warmup 0s --requests "$((STREAMS * ROUNDS))" --duration 120s \
        "${KEY_ARGS[@]}" --label "$label" --out "$RESULTS" >/dev/null
done

echo
echo "### Realistic streaming ($STREAMS concurrent streams, 200 tokens 20 ms apart)"
echo
machine | sed 's/^/    /'
echo
"$BIN/loadgen" report --file "$RESULTS" --kind stream --baseline direct --reference nginx
