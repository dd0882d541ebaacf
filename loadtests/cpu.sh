#!/usr/bin/env bash
# CPU per request: the steadier measure of a proxy's cost on a machine whose request rates move
# from run to run.
#
#   bash loadtests/cpu.sh
#
# nginx and Sluice (keys, limits and the policy snippets on, as in overhead.sh) stand in front of
# a zero-delay mock; each in turn gets CONNS (32) streaming connections for WINDOW (3) seconds,
# while `perf stat` counts the task clock of its processes. CPU time divided by the requests
# served in the window is its cost per request, kernel included. With SLUICE_BEFORE (and
# SLUICE_BEFORE_REPO, as in overhead.sh) an older binary is measured too. Targets alternate for
# ROUNDS (5) rounds, so a slow spell of the machine falls on all of them; the table gives every
# round and the median.
source "$(dirname "$0")/lib.sh"

CONNS="${CONNS:-32}"
WINDOW="${WINDOW:-3}"
ROUNDS="${ROUNDS:-5}"

build
need_nginx
raise_nofile 65536
command -v perf >/dev/null || {
    log "installing perf (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
}

start_proxied
TARGETS=("nginx $NGINX_PORT - nginx" "sluice-on $ON_PORT $BENCH_KEY $ON_PID")
if [[ -n "${SLUICE_BEFORE:-}" ]]; then
    start_before "$MOCK_PORT"
    TARGETS[-1]="${TARGETS[-1]} $SLUICE_PID"
fi
TARGETS[0]="nginx $NGINX_PORT - $(pgrep -d, -f "nginx: worker process")"

machine >&2
RESULTS="$WORK/cpu.txt"
for round in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        read -r label port key pids <<<"$t"
        KEY_ARGS=()
        [[ "$key" != - ]] && KEY_ARGS=(--key "$key")
        "$BIN/loadgen" run --url "http://127.0.0.1:$port/v1/chat/completions" -c "$CONNS" \
            --stream --warmup 1s --duration "$((WINDOW + 2))s" "${KEY_ARGS[@]}" --label "$label" \
            --out "$WORK/$label-$round.jsonl" >/dev/null 2>>"$WORK/loadgen.log" &
        load=$!
        sleep 1.5
        perf stat -e task-clock -p "$pids" -- sleep "$WINDOW" 2>"$WORK/stat.txt"
        wait "$load"
        msec="$(awk '/task-clock/ { gsub(",", "", $1); print $1 }' "$WORK/stat.txt")"
        rps="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["rps"])' "$WORK/$label-$round.jsonl")"
        echo "$label $round $rps $msec" >>"$RESULTS"
    done
done

echo
echo "### CPU per request ($CONNS connections, streaming, ${WINDOW}s windows, $ROUNDS rounds)"
echo
machine | sed 's/^/    /'
echo
python3 - "$RESULTS" "$WINDOW" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, _, rps, msec = line.split()
    # The load ran for the whole perf window, so the window's requests are rps × window.
    rows[label].append((float(rps), float(msec) * 1000 / (float(rps) * float(sys.argv[2]))))
print("| target | req/s per round | CPU µs per request per round | median µs | median ÷ nginx |")
print("|---|---|---|---|---|")
base = statistics.median(us for _, us in rows["nginx"])
for label, runs in rows.items():
    med = statistics.median(us for _, us in runs)
    print(f"| {label} | {' / '.join(f'{r:.0f}' for r, _ in runs)} | "
          f"{' / '.join(f'{us:.1f}' for _, us in runs)} | {med:.1f} | {med / base:.2f} |")
EOF
