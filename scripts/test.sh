#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it.
#   - promtool (Debian package `prometheus`) checks the metrics exposition;
#   - headless Chromium (Debian package `chromium`) renders the eval report page;
#   - the `openai` Python SDK drives the gateway as a real client;
#   - the default local model is fetched once into the model cache (SLUICE_MODEL_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import openai" >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet openai
fi

# Fetch the default model once (a no-op when it is cached and its hash matches).
cargo run --quiet -- models pull --config config/sluice.toml

cargo test --all-targets "$@"
