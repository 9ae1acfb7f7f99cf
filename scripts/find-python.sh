# Sourced by setup.sh and test-py313.sh: `find_python NAME` prints an interpreter that really runs for NAME
# ("python3.12", a path, ...), or nothing. A pyenv shim of a version that is installed but not the active one
# exists on PATH yet fails when run ("pyenv: python3.12: command not found"): then pyenv's own copy is used.
runs_python() { [ -n "$1" ] && "$1" -c 'import sys' >/dev/null 2>&1; }
find_python() {
  local name=$1 minor found
  if runs_python "$name"; then
    command -v "$name"
    return
  fi
  minor=$(sed -nE 's/^python(3\.[0-9]+)$/\1/p' <<<"$(basename "$name")")
  if [ -n "$minor" ] && command -v pyenv >/dev/null 2>&1; then
    found=$(ls -d "$(pyenv root)"/versions/"$minor"*/bin/python"$minor" 2>/dev/null | sort -V | tail -n 1)
    if runs_python "$found"; then echo "$found"; fi
  fi
}
