#!/usr/bin/env bash
# Prefill and decode speed of the local (candle) backend, and of llama.cpp on the same GGUF.
#
#   SLUICE_MODEL_DIR=/work/models loadtests/local-bench.sh [THREADS]
#
# Environment: PROMPT (prompt tokens, 128), GEN (decoded tokens, 64), RUNS (rounds, 4; the first
# is warm-up and left out of the median), LLAMA_PYTHON (a python with llama-cpp-python installed;
# the llama.cpp comparison is skipped when it has none).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${1:-1}"
PROMPT="${PROMPT:-128}"
GEN="${GEN:-64}"
RUNS="${RUNS:-4}"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR="${SLUICE_MODEL_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/sluice/models}"
LLAMA_PYTHON="${LLAMA_PYTHON:-python3}"

cargo build --release --example candle_bench
BIN="${CARGO_TARGET_DIR:-target}/release/examples/candle_bench"

echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for rq in q8_0 q4_0 none; do
    echo "== sluice (candle), requantize=$rq"
    SLUICE_MODEL_DIR="$MODEL_DIR" "$BIN" --model "$MODEL_FILE" --threads "$THREADS" --requantize "$rq" \
        --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --runs "$RUNS"
done

if "$LLAMA_PYTHON" -c 'import llama_cpp' 2>/dev/null; then
    echo "== llama.cpp (llama-cpp-python $("$LLAMA_PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)'))"
    "$LLAMA_PYTHON" loadtests/llama_cpp_bench.py --model "$MODEL_DIR/$MODEL_FILE" --threads "$THREADS" \
        --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --runs "$RUNS"
else
    echo "== llama.cpp skipped: $LLAMA_PYTHON has no llama_cpp (pip install llama-cpp-python)"
fi
