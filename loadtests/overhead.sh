#!/usr/bin/env bash
# Gateway overhead: what Sluice adds to a request, next to what a plain reverse proxy adds.
#
#   bash loadtests/overhead.sh
#
# A zero-delay mock upstream is measured four ways at 1, 32 and 256 keep-alive connections, in one
# run so the ratios share the machine's state: directly; through nginx (proxy_pass, buffering
# off); through Sluice with keys and rate limits on (and every policy snippet in
# loadtests/policy.d/); through Sluice with them off. Requests stream (`"stream": true`, a 5-token
# answer) unless STREAM=0. Then wrk cross-checks the request rate at 32 connections.
#
# Each concurrency is measured in ROUNDS rounds, the targets taking turns within a round, and the
# table gives each target's medians; a target's added latency is taken in each round against
# that round's direct run. One window per target is not enough here: on a 2-core VM the latency
# at one connection moves by half between windows with where the scheduler puts the processes.
#
# Environment: DURATION (per point, 5s), WARMUP (1s), ROUNDS (3), CONNS ("1 32 256"), STREAM (1),
# SLUICE_BEFORE (a second sluice binary, measured as `sluice-before` or as SLUICE_BEFORE_LABEL,
# for before/after comparisons), SLUICE_BEFORE_REPO (a checkout of that binary's commit, whose
# guardrails/ it serves; this checkout's policy when unset), WRK (1; 0 skips the cross-check),
# KEEP_WORK (keep configs and logs).
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
ROUNDS="${ROUNDS:-3}"
CONNS="${CONNS:-1 32 256}"
STREAM="${STREAM:-1}"
WRK="${WRK:-1}"

build
need_nginx
[[ "$WRK" == 1 ]] && need_wrk
raise_nofile 65536

start_proxied
OFF_PORT="$(free_port)"
sluice_config "$WORK/off.toml" "$OFF_PORT" "$MOCK_PORT" off
start_sluice "$WORK/off.toml" "$OFF_PORT"

# label port key
TARGETS=("direct $MOCK_PORT -" "nginx $NGINX_PORT -" "sluice-on $ON_PORT $BENCH_KEY" "sluice-off $OFF_PORT -")
start_before "$MOCK_PORT"

STREAM_FLAG=()
[[ "$STREAM" == 1 ]] && STREAM_FLAG=(--stream)
RESULTS="$WORK/overhead.jsonl"
machine >&2
for c in $CONNS; do
    for _ in $(seq "$ROUNDS"); do
        for t in "${TARGETS[@]}"; do
            read -r label port key <<<"$t"
            KEY_ARGS=()
            [[ "$key" != - ]] && KEY_ARGS=(--key "$key")
            "$BIN/loadgen" run --url "http://127.0.0.1:$port/v1/chat/completions" -c "$c" \
                --duration "$DURATION" --warmup "$WARMUP" "${STREAM_FLAG[@]}" "${KEY_ARGS[@]}" \
                --label "$label" --out "$RESULTS" >/dev/null
        done
    done
done

echo
echo "### Overhead ($([[ "$STREAM" == 1 ]] && echo streaming || echo non-streaming), $DURATION per point, medians of $ROUNDS rounds)"
echo
machine | sed 's/^/    /'
echo
"$BIN/loadgen" report --file "$RESULTS" --kind overhead --baseline direct --reference nginx

if [[ "$WRK" == 1 ]]; then
    BODY='{"model":"mock","messages":[{"role":"user","content":"Say hello."}]'
    [[ "$STREAM" == 1 ]] && BODY+=',"stream":true'
    BODY+='}'
    cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $BENCH_KEY"
EOF
    echo
    echo "wrk cross-check, 32 connections, 2 threads, $DURATION:"
    echo
    echo "| target | wrk req/s | wrk p50 | wrk p99 |"
    echo "|---|---|---|---|"
    for t in "${TARGETS[@]}"; do
        read -r label port _ <<<"$t"
        out="$(wrk -t2 -c32 -d"$DURATION" --latency -s "$WORK/post.lua" \
            "http://127.0.0.1:$port/v1/chat/completions" 2>&1)"
        rps="$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")"
        p50="$(awk '$1 == "50%" { print $2 }' <<<"$out")"
        p99="$(awk '$1 == "99%" { print $2 }' <<<"$out")"
        echo "| $label | $rps | $p50 | $p99 |"
    done
fi
