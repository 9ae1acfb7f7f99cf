#!/usr/bin/env bash
# Create or reuse .venv and install the pinned stack for the Python it is given (PYTHON=..., default python3):
#   3.11 / 3.12: requirements/py311-py312.txt (TensorFlow 2.18.1 + tf-keras), then Horovod 0.28.1 built from source
#                (Gloo, plus MPI when Open MPI is present or installable);
#   3.13:        requirements/py313.txt (TensorFlow 2.21.0 + tf-keras), no Horovod (it does not build against
#                TensorFlow >= 2.19): tf.distribute.MultiWorkerMirroredStrategy only.
# Each finished step leaves a stamp, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
HOROVOD_VERSION=0.28.1
# Horovod wheels built here, one folder per (Horovod, Python, TensorFlow, MPI) combination. Not pip's own cache: pip
# keys a built wheel by the sdist and the interpreter only, so it would hand a Horovod built against another
# TensorFlow to this one (HorovodVersionMismatchError at import).
HOROVOD_WHEELS=${HOROVOD_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/bratsbench/horovod-wheels}
say() { printf '[setup] %s\n' "$*"; }
pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

source scripts/find-python.sh
found=$(find_python "$PYTHON")
[ -n "$found" ] || { echo "[setup] error: PYTHON=$PYTHON not found (nor under pyenv)" >&2; exit 2; }
PYTHON=$found
want=$(pyver "$PYTHON")
case "$want" in
  3.11|3.12) REQS=requirements/py311-py312.txt; WITH_HOROVOD=1 ;;
  3.13) REQS=requirements/py313.txt; WITH_HOROVOD=0 ;;
  *) echo "[setup] error: Python $want is not supported (use 3.11, 3.12 or 3.13)" >&2; exit 2 ;;
esac

# System packages: Open MPI (mpirun, mpi4py, and MPI in the Horovod build), SLURM + munge (job-array tests).
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

if [ -x "$VENV/bin/python" ]; then
  have=$(pyver "$VENV/bin/python" 2>/dev/null || echo unknown)
  if [ "$have" != "$want" ]; then
    say "$VENV has Python $have, Python $want was asked for: recreating it"
    rm -rf "$VENV"
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
req_hash=$(sha256sum "$REQS" pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$VENV/.stamp-reqs-$req_hash" ]; then
  say "installing the Python $want stack from $REQS (first time: ~3 minutes)"
  $PIP install -q --upgrade pip==24.3.1
  $PIP install -q -r "$REQS"
  $PIP install -q --no-deps -e .
  rm -f "$VENV"/.stamp-reqs-* "$VENV"/.stamp-horovod-* && touch "$VENV/.stamp-reqs-$req_hash"
fi

if [ "$WITH_HOROVOD" = 1 ]; then
  mpi_flag=HOROVOD_WITHOUT_MPI=1
  command -v mpicc >/dev/null 2>&1 && mpi_flag=HOROVOD_WITH_MPI=1
  hvd_stamp="$VENV/.stamp-horovod-$HOROVOD_VERSION-${mpi_flag%%=*}-$req_hash"
  if [ ! -f "$hvd_stamp" ]; then
    tf_version=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("tensorflow"))')
    wheel_dir="$HOROVOD_WHEELS/$HOROVOD_VERSION-py$want-tf$tf_version-${mpi_flag%%=*}"
    if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
      say "building Horovod $HOROVOD_VERSION from source against TensorFlow $tf_version ($mpi_flag; first time: ~4-10 minutes, then kept in $wheel_dir)"
      rm -rf "$wheel_dir.tmp" && mkdir -p "$wheel_dir.tmp"
      env CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
          HOROVOD_WITH_GLOO=1 "$mpi_flag" MAKEFLAGS=-j"$(nproc)" \
          $PIP wheel -q --no-cache-dir --no-build-isolation --no-deps -w "$wheel_dir.tmp" "horovod==$HOROVOD_VERSION"
      rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
    else
      say "installing Horovod $HOROVOD_VERSION built earlier against TensorFlow $tf_version ($wheel_dir)"
    fi
    $PIP install -q --force-reinstall --no-deps "$wheel_dir"/horovod-*.whl
    build_info=$("$VENV/bin/horovodrun" --check-build 2>&1) || true  # read it whole: grep -q would close the pipe early
    grep -q '\[X\] Gloo' <<<"$build_info" || { echo "[setup] Horovod built without Gloo:" >&2; echo "$build_info" >&2; exit 1; }
    rm -f "$VENV"/.stamp-horovod-* && touch "$hvd_stamp"
  fi
fi
$PIP check >/dev/null || { $PIP check; exit 1; }
versions=$(TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" -c '
import importlib.util, tensorflow as tf
hvd = "none (MWMS only)"
if importlib.util.find_spec("horovod"):
    import horovod.tensorflow, horovod
    hvd = horovod.__version__
print("TensorFlow", tf.__version__, "Horovod", hvd)' 2>/dev/null | tail -1) || { echo "[setup] error: TensorFlow or Horovod does not import in $VENV" >&2; exit 1; }
say "ready: $VENV, Python $want ($versions)"
