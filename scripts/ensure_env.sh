#!/usr/bin/env bash
# Usage: scripts/ensure_env.sh EXTRAS   (e.g. "cpu" or "cpu,dev"; "gpu" for the GPU extra)
#
# Makes ./.venv hold depthfx installed from this checkout with EXTRAS, and does nothing when it
# already does: a stamp in .venv records the extras and a digest of pyproject.toml, so the
# install re-runs only when either changed. Python >= 3.11 is taken from $PYTHON (default
# python3). Idempotent; safe to run again after an interrupted install (the stamp is written
# last).
set -euo pipefail
extras="${1:?usage: scripts/ensure_env.sh EXTRAS}"
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "depthfx needs Python >= 3.11; $python is $("$python" --version 2>&1)." >&2
    echo "Set PYTHON=/path/to/python3.11 (or newer) and run again." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $("$python" --version 2>&1)"
    "$python" -m venv .venv
fi
want="$extras $(sha256sum pyproject.toml | cut -d' ' -f1)"
stamp=".venv/.depthfx-install-${extras//,/-}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing depthfx[$extras] into .venv (the first install downloads a few GB)"
    .venv/bin/python -m pip install -q -e ".[$extras]"
    echo "$want" > "$stamp"
fi
