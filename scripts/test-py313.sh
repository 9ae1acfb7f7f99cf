#!/usr/bin/env bash
# The second half of `make test`: the Python 3.13 stack (TensorFlow 2.21, MultiWorkerMirroredStrategy only) in its
# own environment: every test that needs no Horovod and is not slow, and the slow ones marked `stack` (their outcome
# depends on TensorFlow's version); the other slow end-to-end tests ran on the 3.11/3.12 stack, for both engines. Where the machine has no Python 3.13 it says so
# (never a silent skip) and exits 0: the Python 3.11/3.12 suite has already run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV313=${VENV313:-.venv-py313}
if [ -x "${VENV:-.venv}/bin/python" ] && [ "$("${VENV:-.venv}/bin/python" -c 'import sys; print(sys.version_info[:2] == (3, 13))')" = True ]; then
  echo "[test-py313] the main environment is already the Python 3.13 stack: nothing more to run"
  exit 0
fi
source scripts/find-python.sh
py=""
for candidate in "${PYTHON313:-}" python3.13; do
  [ -n "$candidate" ] && [ -z "$py" ] && py=$(find_python "$candidate")
done
if [ -n "$py" ] && ! "$py" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then
  py=""
fi
if [ -z "$py" ]; then
  echo "[test-py313] no Python 3.13 on this machine (python3.13, PYTHON313 or pyenv): the MWMS-only stack was NOT tested"
  exit 0
fi
echo "[test-py313] Python 3.13 stack with $py in $VENV313"
VENV=$VENV313 PYTHON=$py bash scripts/setup.sh
exec "$VENV313/bin/python" -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile --durations=15 -m "not horovod and (not slow or stack)" tests
