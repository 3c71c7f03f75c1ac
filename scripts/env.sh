# Sourced by scripts/app.sh and scripts/test.sh: create or refresh the project's virtualenv.
# Everything the project needs is installed here, so a fresh clone needs nothing else.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.nexa-installed"
want="$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "nexa: creating the virtualenv in .venv (first run takes a few minutes)"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "nexa: installing requirements into .venv"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --quiet -r requirements-dev.txt
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# DeepSpeed JIT-builds its C++ ops (CPU Adam; the all-reduce between CPU ranks, or FusedAdam on a
# GPU) the first time a run loads them: about a minute here, with the run showing no step. Built
# once per environment, into the environment's own folder (torch rebuilds an op whenever another
# environment built it last): nexa_core/deepspeed_ops.py. A failed build is not fatal; the first
# run that needs the op then builds it.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$VENV/torch_extensions}"
OPS_STAMP="$VENV/.nexa-ops-built"
if [ "$(cat "$OPS_STAMP" 2>/dev/null)" != "$want $TORCH_EXTENSIONS_DIR" ]; then
  echo "nexa: building DeepSpeed's C++ ops for this environment (nexa ops; about a minute, once)"
  if "$VENV/bin/python" -m nexa_core ops; then
    echo "$want $TORCH_EXTENSIONS_DIR" > "$OPS_STAMP"
  else
    echo "nexa: an op did not build (above); a run that needs it builds it when it starts" >&2
  fi
fi
# Embedded defaults: runs under ./.nexa unless NEXA_HOME says otherwise; never reach the model hub
# unless HF_HUB_OFFLINE=0 is set explicitly.
export NEXA_HOME="${NEXA_HOME:-$ROOT/.nexa}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false
