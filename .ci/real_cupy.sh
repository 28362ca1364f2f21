#!/usr/bin/env bash
# The real-CuPy job (issue 24; docs/gpu.md): tests/real_cupy against the real CuPy wheels, without
# a GPU. One virtual environment per pinned CuPy version (.ci-cupy14, .ci-cupy13; not the test
# environment, where a real CuPy would switch the main suite from the stand-in to "no GPU"). The
# NVIDIA wheels (NVRTC, the CUDA headers, NCCL: 600 MB) go into .ci-cupy14 only, and CuPy 13 is
# pointed at them: it finds neither NVRTC nor the headers inside wheels by itself, so both get
# CUDA_PATH and LD_LIBRARY_PATH (the same pinned headers for both, not a toolkit the machine may
# have). The checks use CuPy internals: change a pin only together with a run of this script.
#
# MINIDIT_REAL_CUPY_VENVS: the folder that holds the two environments (default: the repository
# root); .ci/run keeps them outside the clone, so that a fresh clone reuses them.
# --install-only: install (or check) the two environments and stop; .ci/run starts that in the
# background at its beginning, so that the downloads overlap the main install and test run, and
# then runs the job with --run-only (no second pass of pip over the pins).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENVS=${MINIDIT_REAL_CUPY_VENVS:-.}
mkdir -p "$VENVS"
NUMPY=2.4.6 NVRTC=12.9.86 CUDART=12.9.79 NCCL=2.28.9
start=$(date +%s)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
install() {  # install <venv suffix> <packages...>
  local venv="$VENVS/.ci-cupy$1"
  shift
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-compile --disable-pip-version-check "numpy==$NUMPY" pytest -r requirements.txt "$@" \
    2>&1 | grep -v "^WARNING: Location" || true
}
if [ "${1:-}" != "--run-only" ]; then
  install 14 cupy-cuda12x==14.2.0 "nvidia-cuda-nvrtc-cu12==$NVRTC" "nvidia-cuda-runtime-cu12==$CUDART" \
    "nvidia-nccl-cu12==$NCCL" > "$logs/install-14" 2>&1 & i14=$!
  install 13 cupy-cuda12x==13.6.0 > "$logs/install-13" 2>&1 & i13=$!
  wait $i14 && wait $i13 || { cat "$logs"/install-*; echo "real-cupy job: install FAILED"; exit 1; }
  cat "$logs"/install-*
  echo "real-cupy job: installs done in $(( $(date +%s) - start )) s"
fi
[ "${1:-}" = "--install-only" ] && exit 0
nv="$("$VENVS/.ci-cupy14/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia"
run_one() {  # run_one <venv suffix>
  CUDA_PATH="$nv/cuda_runtime" LD_LIBRARY_PATH="$nv/cuda_nvrtc/lib:$nv/nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    PYTHONPATH="$PWD" MINIDIT_REAL_CUPY=1 MINIDIT_REAL_CUPY_SUMMARY="$logs/summary-$1" MPLBACKEND=Agg \
    "$VENVS/.ci-cupy$1/bin/python" -m pytest -q -p no:cacheprovider -o addopts="-rfE" tests/real_cupy
}
run_one 14 > "$logs/log-14" 2>&1 & p14=$!
run_one 13 > "$logs/log-13" 2>&1 & p13=$!
rc=0
wait $p14 || rc=1
wait $p13 || rc=1
for v in 14 13; do
  cat "$logs/summary-$v" 2>/dev/null || true
  tail -n 1 "$logs/log-$v"
  if [ "$rc" -ne 0 ]; then echo "----- full log, CuPy $v:"; cat "$logs/log-$v"; fi
done
echo "real-cupy job: $([ "$rc" -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
exit "$rc"
