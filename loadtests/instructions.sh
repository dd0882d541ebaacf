#!/usr/bin/env bash
# Instructions per proxied request: the repeatable measure of the gateway's own work. Request
# rates and CPU time on a shared 2-core machine move by 10 % from run to run; valgrind's callgrind
# counts instructions, which are the same for the same binary and load whatever else runs.
#
#   bash loadtests/instructions.sh
#
# The gateway runs under callgrind in front of the zero-delay mock with the "on" config (keys,
# limits, the policy snippets); after WARMUP requests the counters are zeroed, REQUESTS (2000)
# streaming requests are sent over CONNS (1) connections, and the counters of the thread that
# served them are read. Prints instructions per request and the functions that spend most of
# them. POLICY=off measures the bare proxy; SLUICE_BEFORE=/path/to/sluice measures an older
# binary the same way in the same run. Instructions are not time: a tight loop over a small
# array retires several per cycle, a cache miss costs hundreds of cycles for one.
source "$(dirname "$0")/lib.sh"

REQUESTS="${REQUESTS:-2000}"
WARMUP="${WARMUP:-50}"
CONNS="${CONNS:-1}"
POLICY="${POLICY:-on}"
TOP="${TOP:-25}"

# Refused before anything is built or measured.
[[ -n "${SLUICE_BEFORE:-}" ]] && BEFORE_LABEL="$(before_label)"

build
if ! command -v valgrind >/dev/null; then
    log "installing valgrind (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
machine >&2

MOCK_PORT="$(free_port)"
start_mock "$MOCK_PORT"

# measure LABEL BINARY: one gateway under callgrind; prints its line of the table and keeps its
# profile in $WORK/LABEL.
measure() {
    local label="$1" bin="$2" port out pid
    port="$(free_port)"
    out="$WORK/$label"
    mkdir -p "$out"
    sluice_config "$WORK/$label.toml" "$port" "$MOCK_PORT" "$POLICY"
    valgrind --tool=callgrind --separate-threads=yes --compress-strings=no --compress-pos=no \
        --callgrind-out-file="$out/cg.out" "$bin" serve --config "$WORK/$label.toml" \
        >"$WORK/$label.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    local load=("$BIN/loadgen" run --url "http://127.0.0.1:$port/v1/chat/completions"
        -c "$CONNS" --warmup 0s --duration 300s --stream --key "$BENCH_KEY" --label "$label")
    "${load[@]}" --requests "$WARMUP" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    "${load[@]}" --requests "$REQUESTS" >"$out/load.json"
    callgrind_control -d "$pid" >/dev/null
    stop "$pid"
    # The dump after zeroing is part 1; the serving threads are the ones that counted anything
    # much (the others only tick).
    python3 - "$label" "$REQUESTS" "$TOP" "$out"/cg.out.1-* <<'PY'
import collections, re, sys
label, requests, top, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
total = 0
own = collections.Counter()
for path in files:
    fn, after_call = None, False
    for line in open(path):
        if line.startswith("fn="):
            fn = re.sub(r"^\(\d+\) ?", "", line[3:].strip())
        elif line.startswith("calls="):
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) < 2:
                continue
            if after_call:
                after_call = False  # the cost of a call, counted in the callee's own lines
            else:
                own[fn] += int(parts[1])
                total += int(parts[1])
print(f"| {label} | {requests} | {total / requests:,.0f} |")
with open(f"{sys.argv[4].rsplit('/', 1)[0]}/top.txt", "w") as f:
    for name, n in own.most_common(top):
        f.write(f"| {n / requests:,.0f} | {100 * n / total:.1f} % | `{name[:110]}` |\n")
PY
}

echo "### Instructions per request ($CONNS connection(s), streaming, policy $POLICY, callgrind)"
echo
echo "| target | requests | instructions per request |"
echo "|---|---|---|"
measure sluice "$BIN/sluice"
if [[ -n "${SLUICE_BEFORE:-}" ]]; then
    SLUICE_REPO="${SLUICE_BEFORE_REPO:-$SLUICE_REPO}" measure "$BEFORE_LABEL" "$SLUICE_BEFORE"
fi
echo
echo "Own instructions per request of the most expensive functions (sluice):"
echo
echo "| per request | share | function |"
echo "|---|---|---|"
cat "$WORK/sluice/top.txt"
