#!/usr/bin/env bash
# One command on a machine with a CUDA device, within 8 minutes: the CUDA tests
# (python -m pytest -m cuda) and the benchmark's GPU workloads (scripts/bench_optim.py --device cuda:
# the three CPU workloads and BERT-base; the searches on their fused path, Triton, and on their
# foreach path against fused AdamW), reported in <out>/gpu_check_<device>.json and .md with the
# logs beside them (scripts/gpu_check_report.py); bench_optim_cuda.json/.md land in <out> as well.
#
#   scripts/gpu_check.sh
#
# Settings (environment): PYTHON (python), GPU_CHECK_OUT (outputs/gpu_check, ignored by git),
# GPU_CHECK_TESTS_TIMEOUT_S (260), GPU_CHECK_BENCH_TIMEOUT_S (170), GPU_CHECK_BENCH_STEPS (120, in
# blocks of 20), GPU_CHECK_BENCH_WORKLOADS (mlp,cnn,transformer,bert), GPU_CHECK_BENCH_OPTIMIZERS (the
# rows: fused AdamW, the baseline, then fused Adam, SaLSA and adamsls on each path and L4Adam fused;
# where the GPU has no fused kernels the fused rows are left out and the report says why). Each part runs under its own
# time limit (GNU timeout: SIGINT, so that pytest still writes its XML, then SIGKILL 10 s later); a
# part stopped by it is reported as such, with what it finished. With the defaults the whole check
# ends within 30 + 270 + 180 s = 8 minutes.
# Exit status: 0 every test passed and every workload was measured; 1 otherwise (the report says
# what); 2 nothing was run (no CUDA device, no python with torch): one line on stderr says why.
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

python=${PYTHON:-python}
out=${GPU_CHECK_OUT:-outputs/gpu_check}
tests_timeout=${GPU_CHECK_TESTS_TIMEOUT_S:-260}
bench_timeout=${GPU_CHECK_BENCH_TIMEOUT_S:-170}
bench_steps=${GPU_CHECK_BENCH_STEPS:-120}
workloads=${GPU_CHECK_BENCH_WORKLOADS:-mlp,cnn,transformer,bert}
baseline="AdamW (fused)"
optimizers=${GPU_CHECK_BENCH_OPTIMIZERS:-Adam (fused),SaLSA (fused),SaLSA (foreach),adamsls (fused),adamsls (foreach),L4Adam (fused)}

refuse() {
    echo "gpu_check: $*; nothing was run" >&2
    exit 2
}

command -v timeout >/dev/null 2>&1 || refuse "needs timeout (GNU coreutils)"
command -v "$python" >/dev/null 2>&1 || refuse "no $python to run (set PYTHON)"

# The device, or why there is none: the last line the probe prints.
probe=$(timeout 30 "$python" - 2>&1 <<'EOF'
import sys
try:
    import torch
except Exception as error:
    print(f"cannot import torch with {sys.executable} ({type(error).__name__}: {error})")
    sys.exit(1)
if not torch.cuda.is_available():
    build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    print(f"no CUDA device (torch.cuda.is_available() is False; torch {torch.__version__}, {build})")
    sys.exit(1)
print("\t".join([torch.cuda.get_device_name(0), torch.__version__, torch.version.cuda or "?"]))
EOF
)
probe_rc=$?
last=$(printf '%s\n' "$probe" | tail -n 1)
if [ "$probe_rc" -ne 0 ]; then
    [ "$probe_rc" -eq 124 ] && last="the CUDA probe did not answer within 30 s"
    refuse "${last:-the CUDA probe failed (exit code $probe_rc)}"
fi
IFS=$'\t' read -r device_name torch_version cuda_version <<<"$last"

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || refuse "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1  # the tests and the benchmark need nothing from the network
start=$(date +%s)
echo "gpu_check: $device_name (torch $torch_version, CUDA $cuda_version): the CUDA tests (at most" \
     "${tests_timeout} s), then the benchmark (at most ${bench_timeout} s)" >&2

timeout --signal=INT --kill-after=10 "$tests_timeout" "$python" -m pytest -m cuda -v -rA -p no:cacheprovider \
    --junitxml="$work/pytest.xml" 2>&1 | tee "$work/pytest.log"
tests_rc=${PIPESTATUS[0]}

timeout --signal=INT --kill-after=10 "$bench_timeout" "$python" scripts/bench_optim.py --device cuda \
    --workloads "$workloads" --steps "$bench_steps" --block 20 --baseline "$baseline" \
    --optimizers "$optimizers" --out "$work/bench" 2>&1 | tee "$work/bench.log"
bench_rc=${PIPESTATUS[0]}
# The benchmark writes its JSON after every workload: keep what it measured, even if stopped.
mkdir -p "$out" && cp "$work"/bench/bench_optim_cuda.* "$out"/ 2>/dev/null

flags=()
case $tests_rc in 124 | 137) flags+=(--pytest-timed-out) ;; esac
case $bench_rc in 124 | 137) flags+=(--bench-timed-out) ;; esac
"$python" scripts/gpu_check_report.py --device-name "$device_name" --torch "$torch_version" \
    --cuda "$cuda_version" --pytest-xml "$work/pytest.xml" --pytest-log "$work/pytest.log" \
    --pytest-rc "$tests_rc" --bench-json "$work/bench/bench_optim_cuda.json" --bench-log "$work/bench.log" \
    --bench-rc "$bench_rc" --bench-workloads "$workloads" --seconds "$(($(date +%s) - start))" \
    --out "$out" ${flags[@]+"${flags[@]}"}
