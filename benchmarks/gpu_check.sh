#!/usr/bin/env bash
# The GPU check in one command of at most 10 minutes: the gpu-marked tests (compiled Triton
# kernels at real sizes, every dtype, against a float64 reference), then the benchmark, targets
# first, then the layer kernels (sLSTM against cuDNN's LSTM, minGRU and minLSTM against its GRU;
# B=32, H=256 and 1024, T=256 and 1024), then a short summary table last (so that the end of the
# output is the part to read).
# Results go to $OUT when set, else benchmarks/results/, with measured.json: the table
# backend="auto" reads (copy it to src/gatedrnn/backends/triton/).
#
#   bash benchmarks/gpu_check.sh [TEST_BUDGET_S] [BENCH_BUDGET_S]   # defaults 270 and 170
#   bash benchmarks/gpu_check.sh --dry-run                          # CPU-side checks only, no GPU
#
# The package runs from src/ (PYTHONPATH), nothing is installed. GATEDRNN_TRITON_CUDA=1 lets the
# not-yet-verified kernels run on CUDA (the backend refuses CUDA without it).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
test_budget="${1:-270}"
bench_budget="${2:-170}"  # of which the launch-override sweep takes at most 60 s
out="${OUT:-benchmarks/results}"
if [ "$dry" = 1 ] && [ -z "${OUT:-}" ]; then out="$(mktemp -d)"; fi
mkdir -p "$out"
py="${PYTHON:-python3}"
export GATEDRNN_TRITON_CUDA=1 PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

# parallel test workers where pytest-xdist exists; a per-test timeout (pytest-timeout) turns a
# hung persistent kernel into one failed test: its worker is killed and replaced
pytest_opts=(-m gpu -q -rfE -p no:cacheprovider --junitxml="$out/gpu_tests.xml")
if "$py" -c "import xdist" 2>/dev/null; then pytest_opts+=(-n 4); fi
if "$py" -c "import pytest_timeout" 2>/dev/null; then pytest_opts+=(--timeout 150 --timeout-method thread); fi

if [ "$dry" = 1 ]; then
    echo "dry run: $py, pytest options: ${pytest_opts[*]}"
    "$py" -m pytest tests/test_triton_backend.py --collect-only -q -m gpu -p no:cacheprovider | tail -1
    "$py" benchmarks/gpu.py --dry-run > "$out/gpu_bench_cases.txt" && head -20 "$out/gpu_bench_cases.txt"
    exit $?
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
  "$py" -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__)"
} | tee "$out/machine.txt"

start=$(date +%s)
timeout -s INT -k 20 "$test_budget" "$py" -m pytest tests/test_triton_backend.py "${pytest_opts[@]}" \
    > "$out/gpu_tests.txt" 2>&1
tests_rc=$?
tests_s=$(( $(date +%s) - start ))

# the speed-ups for backend="auto": $out/measured.json, this device verified only if every gpu test
# passed; copy it over src/gatedrnn/backends/triton/measured.json to ship it
cp src/gatedrnn/backends/triton/measured.json "$out/measured.json"
# verified: the tests exited 0 and at least one ran (pytest exits 0 when every test skips)
verified=()
if [ "$tests_rc" = 0 ] && "$py" - "$out/gpu_tests.xml" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
counts = {k: int(suite.get(k, 0)) for k in ("tests", "skipped", "failures", "errors")}
passed = counts["tests"] - counts["skipped"] - counts["failures"] - counts["errors"]
sys.exit(0 if passed > 0 and counts["failures"] == counts["errors"] == 0 else 1)
PYEOF
then verified=(--verified); fi
start=$(date +%s)
timeout -s INT -k 20 $(( bench_budget + 100 )) "$py" benchmarks/gpu.py --budget-s "$bench_budget" --rep-ms 100 \
    --sweep-budget-s 60 \
    --csv "$out/gpu_bench.csv" --markdown "$out/gpu_bench.md" --auto-table "$out/measured.json" ${verified[@]+"${verified[@]}"} \
    > "$out/gpu_bench.log" 2>&1
bench_rc=$?
bench_s=$(( $(date +%s) - start ))

echo
echo "== machine: $(head -1 "$out/machine.txt") | $(sed -n 2p "$out/machine.txt")"
echo "== gpu tests: exit $tests_rc in ${tests_s}s (0 all passed, 1 failures, 124/130 out of time); verified: ${verified[*]:-no}; $out/gpu_tests.txt"
grep -E "^(FAILED|ERROR)" "$out/gpu_tests.txt" | cut -c1-220 | head -25
tail -1 "$out/gpu_tests.txt"
echo "== benchmark: exit $bench_rc in ${bench_s}s; table $out/gpu_bench.md, log $out/gpu_bench.log"
if grep -q "^Summary" "$out/gpu_bench.log"; then
    sed -n '/^Summary/,$p' "$out/gpu_bench.log" | grep -v "^  train: "
    echo "== auto's table: $out/measured.json ($(grep -c '"cell"' "$out/measured.json") cases)"
    grep "^Not run" "$out/gpu_bench.md" | cut -c1-300
else
    tail -25 "$out/gpu_bench.log"
fi
