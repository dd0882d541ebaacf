# Shared by the load-test scenarios: building, ports, starting and stopping the processes under
# test, and the gateway configs. Sourced, not run.
#
# Every process is started in the background by the scenario, recorded by its PID, and stopped by
# that PID when the scenario exits (however it exits). Everything listens on 127.0.0.1, on ports
# below the kernel's ephemeral range so they never collide with outgoing connections.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Policy snippets (loadtests/policy.d/) name files of the checkout through this variable.
export SLUICE_REPO="$PWD"

BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d -t sluice-load.XXXXXX)"
PIDS=()
# The API key the scenarios use when keys are on (a test key, never a real one).
BENCH_KEY="sk-sluice-bench"

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -z "${KEEP_WORK:-}" ]]; then
        rm -rf "$WORK"
    else
        echo "work files kept in $WORK" >&2
    fi
}
trap cleanup EXIT

log() { echo "== $*" >&2; }

# Builds the gateway, the mock upstream and the load generator with the repository's own
# target dir (or CARGO_TARGET_DIR when set).
build() {
    log "building (cargo build --release)"
    cargo build --release --quiet --bin sluice --bin mock-upstream --bin loadgen
}

# Raises the open-file limit: each proxied stream holds two sockets in the proxy.
raise_nofile() {
    local want="${1:-65536}"
    ulimit -Hn "$want" 2>/dev/null || true
    ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    log "open files limit: $(ulimit -n)"
}

# A free TCP port on 127.0.0.1 below the ephemeral range.
free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

# Waits (at most 30 s) until something accepts connections on the port.
wait_port() {
    local port="$1"
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$port after 30 s" >&2
    return 1
}

# start_mock PORT [mock-upstream args...]: the OpenAI-compatible mock upstream.
start_mock() {
    local port="$1"
    shift
    "$BIN/mock-upstream" --listen "127.0.0.1:$port" "$@" >"$WORK/mock-$port.log" 2>&1 &
    PIDS+=("$!")
    MOCK_PID=$!
    wait_port "$port"
}

# start_sluice CONFIG PORT [binary]: the gateway, its log in the work dir.
start_sluice() {
    local config="$1" port="$2" bin="${3:-$BIN/sluice}"
    "$bin" serve --config "$config" >"$WORK/sluice-$port.log" 2>&1 &
    PIDS+=("$!")
    SLUICE_PID=$!
    wait_port "$port"
}

# before_label: the name of SLUICE_BEFORE's rows: SLUICE_BEFORE_LABEL, `sluice-before` when unset
# (for the profile-guided build, `sluice-pgo`). One word, as the tables read it and as a file
# name; anything else is refused.
before_label() {
    local label="${SLUICE_BEFORE_LABEL:-sluice-before}"
    if [[ ! "$label" =~ ^[A-Za-z0-9._-]+$ ]]; then
        echo "SLUICE_BEFORE_LABEL must be one word of letters, digits, '.', '_' or '-': $label" >&2
        return 1
    fi
    echo "$label"
}

# start_before UPSTREAM_PORT: when SLUICE_BEFORE names an older sluice binary, starts it with the
# "on" config in front of the upstream and adds `LABEL PORT KEY` to TARGETS (LABEL from
# before_label), so one run measures before and after side by side. An older binary may not
# pass the newer policy's own tests, so it serves SLUICE_BEFORE_REPO's policy (this checkout's
# when unset).
start_before() {
    [[ -n "${SLUICE_BEFORE:-}" ]] || return 0
    local port label
    label="$(before_label)"
    port="$(free_port)"
    sluice_config "$WORK/before.toml" "$port" "$1" on
    SLUICE_REPO="${SLUICE_BEFORE_REPO:-$SLUICE_REPO}" \
        start_sluice "$WORK/before.toml" "$port" "$SLUICE_BEFORE"
    TARGETS+=("$label $port $BENCH_KEY")
}

# start_proxied [MOCK_ARGS...]: the scenarios' common set-up. The mock upstream (with MOCK_ARGS),
# nginx in front of it and the gateway with the "on" config (keys, limits, policy snippets); sets
# MOCK_PORT, NGINX_PORT, ON_PORT and ON_PID.
start_proxied() {
    MOCK_PORT="$(free_port)"
    start_mock "$MOCK_PORT" "$@"
    NGINX_PORT="$(free_port)"
    start_nginx "$NGINX_PORT" "$MOCK_PORT"
    ON_PORT="$(free_port)"
    sluice_config "$WORK/on.toml" "$ON_PORT" "$MOCK_PORT" on
    start_sluice "$WORK/on.toml" "$ON_PORT"
    ON_PID="$SLUICE_PID"
}

# stop PID: stops one process this scenario started.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Installs nginx from Debian when it is missing.
need_nginx() {
    if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
        log "installing nginx (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    fi
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
}

# Installs wrk from Debian when it is missing (a cross-check of the request rate).
need_wrk() {
    if ! command -v wrk >/dev/null; then
        log "installing wrk (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    fi
}

# start_nginx LISTEN_PORT UPSTREAM_PORT: a plain reverse proxy, as it would be set up in front of
# a streaming API: unbuffered, HTTP/1.1 with a keep-alive pool to the upstream, access log on
# (as nginx ships), one worker per core.
start_nginx() {
    local port="$1" upstream="$2" dir="$WORK/nginx-$1"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes auto;
worker_rlimit_nofile 65536;
daemon off;
user root;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 30000; }
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream mock {
        server 127.0.0.1:$upstream;
        keepalive 1024;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
EOF
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    PIDS+=("$!")
    NGINX_PID=$!
    wait_port "$port"
}

# sluice_config FILE LISTEN_PORT UPSTREAM_PORT on|off: a gateway in front of the mock.
#   on:  client keys and rate limits (global, per model, per key), generous enough that nothing
#        is refused, plus every policy snippet in loadtests/policy.d/ (guardrails go there).
#   off: no keys, no limits.
# An optional fifth argument is more TOML appended as is (more models, for example).
# UPSTREAM_HTTP2=true makes the gateway speak h2c (prior knowledge) to the mock, one connection
# for all streams, instead of a pooled HTTP/1.1 connection per stream.
sluice_config() {
    local file="$1" port="$2" upstream="$3" policy="$4" extra="${5:-}"
    cat >"$file" <<EOF
[server]
listen = "127.0.0.1:$port"
max_connections = 30000

[logging]
level = "${SLUICE_LOG_LEVEL:-info}"

[backends.upstream]
type = "openai"
base_url = "http://127.0.0.1:$upstream/v1"
pool_max_idle_per_host = 1024
idle_timeout = "10m"
http2_only = ${UPSTREAM_HTTP2:-false}

[models.mock]
backend = "upstream"
EOF
    if [[ "$policy" == on ]]; then
        local hash
        hash="$(echo "$BENCH_KEY" | "$BIN/sluice" keys hash)"
        cat >>"$file" <<EOF
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000

[rate_limits]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000

[keys.bench]
sha256 = "$hash"
requests_per_minute = ${KEY_RPM:-1000000000}
tokens_per_minute = 1000000000000
max_concurrent = 100000
EOF
        # The policy hook: every snippet in loadtests/policy.d/*.toml is appended to the gateway
        # under test when policy is on, so guardrails are measured as soon as they exist.
        local snippet
        for snippet in loadtests/policy.d/*.toml; do
            [[ -e "$snippet" ]] || continue
            printf '\n# from %s\n' "$snippet" >>"$file"
            cat "$snippet" >>"$file"
        done
    fi
    printf '\n%s\n' "$extra" >>"$file"
}

# rss_kb PID: resident set size in KiB.
rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# The machine, for the record.
machine() {
    echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), nproc $(nproc), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "load: $(uptime)"
}
