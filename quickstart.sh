#!/usr/bin/env bash
# The main job, from a fresh clone: set up ./.venv (only if missing or out of date), then
# compress torchvision's MobileNetV2 to 70% of its ONNX Runtime CPU latency and write mbv2.onnx.
# Extra arguments go to `depthfx compile` (e.g. ./quickstart.sh --data imagenet_val/).
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_env.sh cpu
exec .venv/bin/depthfx compile torchvision:mobilenet_v2 --budget 0.7 -o mbv2.onnx "$@"
