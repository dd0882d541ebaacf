#!/usr/bin/env bash
# Rate limits under a burst: a key allowed KEY_RPM requests a minute is sent ten times that rate,
# open loop (the offered rate does not slow down when refusals come back), and the admitted rate
# is compared with the configured one.
#
#   bash loadtests/limits.sh
#
# The limiter is GCRA: it admits a first burst of up to the per-minute quota, then exactly the
# configured rate. The second half of the run is past the burst, so its admitted rate is the one
# to compare. Environment: KEY_RPM (600), DURATION (20s).
source "$(dirname "$0")/lib.sh"

export KEY_RPM="${KEY_RPM:-600}"
DURATION="${DURATION:-20s}"
OFFERED="$(awk -v r="$KEY_RPM" 'BEGIN { print r / 6 }')" # 10 × the per-second rate

build
raise_nofile 65536
MOCK_PORT="$(free_port)"
start_mock "$MOCK_PORT"
PORT="$(free_port)"
sluice_config "$WORK/on.toml" "$PORT" "$MOCK_PORT" on
start_sluice "$WORK/on.toml" "$PORT"

RESULTS="$WORK/limits.jsonl"
machine >&2
"$BIN/loadgen" run --url "http://127.0.0.1:$PORT/v1/chat/completions" -c 64 --rate "$OFFERED" \
    --warmup 0s --duration "$DURATION" --key "$BENCH_KEY" --label "sluice key rpm=$KEY_RPM" \
    --out "$RESULTS" >/dev/null

echo
echo "### Rate limit under a 10× burst ($DURATION, key limit $KEY_RPM requests/minute)"
echo
machine | sed 's/^/    /'
echo
"$BIN/loadgen" report --file "$RESULTS" --kind limits --configured-per-minute "$KEY_RPM"
