#!/usr/bin/env bash
# Create or reuse .venv and install the pinned stack, Horovod 0.28.1 built from source (Gloo, plus MPI when
# Open MPI is present or installable). Each finished step leaves a stamp, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
HOROVOD_VERSION=0.28.1
say() { printf '[setup] %s\n' "$*"; }

# System packages: Open MPI (mpirun, and MPI in the Horovod build), SLURM + munge (job-array tests).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  command -v mpicc >/dev/null 2>&1 || need+=(libopenmpi-dev openmpi-bin)
  command -v slurmctld >/dev/null 2>&1 || need+=(slurm-wlm)
  command -v munged >/dev/null 2>&1 || need+=(munge)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing system packages: ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
req_hash=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$VENV/.stamp-reqs-$req_hash" ]; then
  say "installing pinned requirements (first time: ~1 minute)"
  $PIP install -q --upgrade pip==24.3.1 setuptools==75.6.0 wheel==0.45.1
  $PIP install -q -r requirements.txt
  $PIP install -q --no-deps -e .
  rm -f "$VENV"/.stamp-reqs-* && touch "$VENV/.stamp-reqs-$req_hash"
fi

mpi_flag=HOROVOD_WITHOUT_MPI=1
command -v mpicc >/dev/null 2>&1 && mpi_flag=HOROVOD_WITH_MPI=1
hvd_stamp="$VENV/.stamp-horovod-$HOROVOD_VERSION-${mpi_flag%%=*}-$req_hash"
if [ ! -f "$hvd_stamp" ]; then
  say "building Horovod $HOROVOD_VERSION from source against TensorFlow ($mpi_flag; first time: ~3-5 minutes, then cached by pip)"
  env CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      HOROVOD_WITH_GLOO=1 "$mpi_flag" MAKEFLAGS=-j"$(nproc)" \
      $PIP install -q --no-build-isolation --force-reinstall --no-deps "horovod==$HOROVOD_VERSION"
  build_info=$("$VENV/bin/horovodrun" --check-build 2>&1) || true  # read it whole: grep -q would close the pipe early
  grep -q '\[X\] Gloo' <<<"$build_info" || { echo "[setup] Horovod built without Gloo:" >&2; echo "$build_info" >&2; exit 1; }
  rm -f "$VENV"/.stamp-horovod-* && touch "$hvd_stamp"
fi
$PIP check >/dev/null || { $PIP check; exit 1; }
say "ready: $VENV ($("$VENV/bin/python" -c 'import tensorflow as t, horovod as h; print("TensorFlow", t.__version__, "Horovod", h.__version__)' 2>/dev/null))"
