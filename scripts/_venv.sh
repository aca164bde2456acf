# Sourced by scripts/*: make sure .venv exists and holds hpcsgd with its test extras.
# Re-installs only when setup.cfg changed since the last install.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.hpcsgd-installed"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip || exit 1
fi
if [ ! -f "$stamp" ] || [ "$root/setup.cfg" -nt "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "[setup] installing hpcsgd and its dependencies into $venv (log: $venv/install.log)"
  if ! "$venv/bin/python" -m pip install -e "$root[test]" > "$venv/install.log" 2>&1; then
    tail -40 "$venv/install.log"
    echo "[setup] pip install failed; full log in $venv/install.log" >&2
    exit 1
  fi
  touch "$stamp"
fi
PY="$venv/bin/python"
MPIEXEC="$venv/bin/mpiexec"
HPCSGD="$venv/bin/hpcsgd"
export PATH="$venv/bin:$PATH"
