#!/usr/bin/env bash
# How long `sluice eval run` takes: the shipped local golden set on the embedded model, and cases
# per second through the remote path against a zero-delay mock.
#
#   bash loadtests/eval.sh
#
# The local suite (evals/smollm2-basics.toml, in-process, config/sluice.toml) runs ROUNDS (3)
# times; its wall time is the user's wait for a validation run. The mock suite is CASES (20000)
# generated cases scored like evals/mock-remote.toml, run in-process in front of the mock
# upstream at each concurrency of CONCURRENCY ("1 4 16"); cases per second is the eval
# harness's own cost (gateway, client, scorers, record), since the mock answers at once. Every
# run's CPU time and peak memory come from GNU time, its wall time from the clock around it.
source "$(dirname "$0")/lib.sh"

ROUNDS="${ROUNDS:-3}"
CASES="${CASES:-20000}"
CONCURRENCY="${CONCURRENCY:-1 4 16}"

build
command -v /usr/bin/time >/dev/null || {
    log "installing GNU time (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
}

MOCK_PORT="$(free_port)"
start_mock "$MOCK_PORT"
sed -e "s|127.0.0.1:9101|127.0.0.1:$MOCK_PORT|" -e "s|127.0.0.1:8080|127.0.0.1:0|" \
    config/mock.toml >"$WORK/mock.toml"

python3 - "$CASES" >"$WORK/cases.jsonl" <<'EOF'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"id": f"case-{i}",
                      "messages": [{"role": "user", "content": f"Say hello to visitor {i}."}],
                      "reference": "Hello from the mock upstream."}))
EOF
cat >"$WORK/mock-suite.toml" <<'EOF'
name = "mock-throughput"
dataset = "cases.jsonl"
model = "mock"
threshold = 1.0

[request]
temperature = 0
max_tokens = 16

[[scorer]]
type = "contains"

[[scorer]]
type = "regex"
pattern = '^Hello\b'

[[scorer]]
type = "f1"
min = 0.8
EOF

# timed LABEL ARGS...: one `sluice eval run`, its figures appended to the results.
timed() {
    local label="$1"
    shift
    local start end
    start="$(date +%s.%N)"
    /usr/bin/time -f "%U %S %M" -o "$WORK/time.txt" \
        "$BIN/sluice" eval run --no-progress --records "$WORK/records" "$@" \
        >>"$WORK/eval.log" 2>&1 || {
        echo "eval run failed ($label); its output:" >&2
        tail -20 "$WORK/eval.log" >&2
        return 1
    }
    end="$(date +%s.%N)"
    read -r user sys rss <"$WORK/time.txt"
    wall="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')"
    echo "$label $wall $user $sys $rss" >>"$WORK/results.txt"
}

machine >&2
for round in $(seq "$ROUNDS"); do
    log "local suite, round $round"
    timed "local-$round" evals/smollm2-basics.toml --config config/sluice.toml
done
for c in $CONCURRENCY; do
    log "mock suite, $CASES cases, concurrency $c"
    timed "mock-c$c" "$WORK/mock-suite.toml" --config "$WORK/mock.toml" --concurrency "$c"
done

echo
echo "### sluice eval run"
echo
machine | sed 's/^/    /'
echo
echo "| run | wall s | CPU s (user+sys) | peak RSS MiB | cases/s |"
echo "| --- | ---: | ---: | ---: | ---: |"
while read -r label wall user sys rss; do
    n=10
    [[ "$label" == mock-* ]] && n="$CASES"
    awk -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v n="$n" \
        'BEGIN { printf "| %s | %.3f | %.2f | %.0f | %.1f |\n", l, w, u + s, r / 1024, n / w }'
done <"$WORK/results.txt"
