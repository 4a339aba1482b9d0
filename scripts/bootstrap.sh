#!/usr/bin/env bash
# Create .venv and install pixelmill into it, with the right PyTorch build for this machine.
#
#   scripts/bootstrap.sh          # the server
#   scripts/bootstrap.sh --test   # the server plus the test tools
#
# PyTorch: on a machine without an NVIDIA GPU we install the CPU build (torch==2.13.0;
# set PIXELMILL_TORCH_INDEX to PyTorch's CPU wheel index if your pip cannot find a CPU
# build on its own), so no CUDA packages are downloaded. With an NVIDIA GPU (nvidia-smi
# works) we install torch the usual way, which brings CUDA. PIXELMILL_TORCH overrides
# the requirement entirely, e.g. PIXELMILL_TORCH="torch==2.13.0".
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if [ -n "${PIXELMILL_TORCH:-}" ]; then
        echo "bootstrap: installing ${PIXELMILL_TORCH} (PIXELMILL_TORCH)"
        pip install "${PIXELMILL_TORCH}"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "bootstrap: NVIDIA GPU found: installing the CUDA build of torch"
        pip install torch
    else
        echo "bootstrap: no NVIDIA GPU: installing the CPU build of torch (torch==2.13.0)"
        pip install "torch==2.13.0" ${PIXELMILL_TORCH_INDEX:+--index-url "$PIXELMILL_TORCH_INDEX"}
    fi
fi
if [ -n "$extras" ]; then
    # The dashboard's browser test drives Debian's Chromium through its chromedriver; nothing is
    # downloaded at test time. Install them when missing and we can (root with apt); otherwise
    # that test skips and says why (and fails under CI=true).
    if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            echo "bootstrap: installing chromium and chromium-driver (apt) for the dashboard test"
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
                || echo "bootstrap: warning: could not install chromium; the browser test will skip (fail under CI)" >&2
        else
            echo "bootstrap: chromium/chromedriver missing and apt-get unavailable (or not root): the browser test will skip" >&2
        fi
    fi
fi
pip install -e ".${extras}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

if .venv/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-' && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "bootstrap: warning: CUDA packages are installed on a machine without an NVIDIA GPU" >&2
fi
echo "bootstrap: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
