#!/usr/bin/env bash
# The project's checks, from a fresh clone: set up ./.venv with the test tools (only if missing
# or out of date), then ruff, the import-layer contract (lint-imports) and pytest.
# Extra arguments go to pytest (e.g. ./test.sh -m slow, ./test.sh tests/solver).
# Fails when a check fails, and when pytest collected no test (exit status 5).
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_env.sh cpu,dev,ray
export PATH="$PWD/.venv/bin:$PATH"
python - <<'PY'
import onnxruntime, torch, torchvision, timm
print(f"torch {torch.__version__}  torchvision {torchvision.__version__}  timm {timm.__version__}"
      f"  onnxruntime {onnxruntime.__version__}")
PY

ruff check .
ruff format --check .
lint-imports

set +e
pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests — failing on purpose" >&2
    exit 1
fi
exit "$status"
