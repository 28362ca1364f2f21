#!/usr/bin/env bash
# The real-CuPy job (issue 24): tests/real_cupy against the real CuPy wheels, without a GPU.
# One virtual environment per pinned CuPy version (.ci-cupy14, .ci-cupy13; not the test
# environment, where a real CuPy would switch the main suite from the stand-in to "no GPU"), each
# with the NVRTC, CUDA headers and NCCL wheels; both run at once, then their summary lines print.
# The checks use CuPy internals (issue 24 says which): change a pin only together with a run of
# this script. Installs come from pip's cache after the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NUMPY=2.4.6 NVRTC=12.9.86 CUDART=12.9.79 NCCL=2.28.9
start=$(date +%s)
logs=$(mktemp -d)
run_one() {  # run_one <venv suffix> <cupy-cuda12x version>
  local venv=".ci-cupy$1" sp
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "cupy-cuda12x==$2" "numpy==$NUMPY" \
    "nvidia-cuda-nvrtc-cu12==$NVRTC" "nvidia-cuda-runtime-cu12==$CUDART" "nvidia-nccl-cu12==$NCCL" \
    pytest -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
  sp="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia"
  # CuPy 13 finds neither NVRTC nor the CUDA headers inside the wheels by itself: point it there
  # (and CuPy 14 too, so that both use the same pinned headers, not a toolkit the machine may have)
  CUDA_PATH="$sp/cuda_runtime" LD_LIBRARY_PATH="$sp/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    PYTHONPATH="$PWD" MINIDIT_REAL_CUPY=1 MINIDIT_REAL_CUPY_SUMMARY="$logs/summary-$1" MPLBACKEND=Agg \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/real_cupy
}
run_one 14 14.2.0 > "$logs/log-14" 2>&1 & p14=$!
run_one 13 13.6.0 > "$logs/log-13" 2>&1 & p13=$!
rc=0
wait $p14 || rc=1
wait $p13 || rc=1
for v in 14 13; do
  cat "$logs/summary-$v" 2>/dev/null || true
  tail -n 1 "$logs/log-$v"
  if [ "$rc" -ne 0 ]; then echo "----- full log, CuPy job $v:"; cat "$logs/log-$v"; fi
done
echo "real-cupy job: $([ "$rc" -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
rm -rf "$logs"
exit "$rc"
