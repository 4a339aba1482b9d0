#!/usr/bin/env bash
# Create .venv and install pixelmill into it, with the right PyTorch build for this machine.
#
#   scripts/bootstrap.sh          # the server
#   scripts/bootstrap.sh --test   # the server plus the test tools
#
# Everything is installed from the lock files in locks/ (the versions the tests ran with;
# scripts/lock.sh refreshes them), so a fresh machine gets what CI tested, not whatever the
# package index serves today.
#
# PyTorch comes first, at the version in locks/torch.txt, as the build that fits the machine:
# with an NVIDIA GPU (nvidia-smi works) the usual PyPI build, which brings CUDA; without one
# the CPU build, from a local wheel when pip is given one (PIP_FIND_LINKS), else from
# PIXELMILL_TORCH_INDEX (default: PyTorch's CPU wheel index), so no CUDA packages are
# downloaded. PIXELMILL_TORCH overrides the requirement entirely, e.g. PIXELMILL_TORCH="torch==2.13.0+cu128".
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python=${PYTHON:-python3}

# Said first, before anything is installed: --test may install system packages with apt.
browser_missing=""
if [ -n "$extras" ] && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
    browser_missing=1
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "bootstrap: --test will also install the system packages chromium and chromium-driver with apt-get" \
             "(for the browser tests; install them yourself beforehand to skip this)"
    fi
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

# The locked set is installed by uv (pinned in locks/uv.txt), which takes seconds where pip
# takes minutes (measured on 2 cores: 7.7 s against 2 min 45 s for locks/test.txt). pip stays the
# fallback when uv cannot be installed; both install exactly the same locked versions.
uv_req=$(grep -E '^uv==' locks/uv.txt)
have_uv=$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2 || true)
if [ "uv==$have_uv" != "$uv_req" ] && ! pip install "$uv_req" 2>/dev/null; then
    echo "bootstrap: could not install $uv_req: installing with pip (slower)" >&2
fi
if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2 || true)" = "${uv_req#uv==}" ]; then
    # uv does not read pip's configuration: hand it the local wheel folder pip would use. It
    # also does not compile bytecode unless asked, as pip does: without it every process
    # compiles torch, transformers and diffusers again where PYTHONDONTWRITEBYTECODE is set
    # (measured: importing them took 18 s instead of 6.4 s, and the suite 17 min instead of 10).
    install() { .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python \
                    ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} "$@"; }
else
    install() { pip install "$@"; }
fi

lock=locks/server.txt
[ -n "$extras" ] && lock=locks/test.txt
torch_req=$(grep -E '^torch==' locks/torch.txt)
venv_py=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$venv_py" = 3.11 ] || echo "bootstrap: warning: the locks were made and tested on Python 3.11, this is $venv_py" >&2

have_torch=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ -n "${PIXELMILL_TORCH:-}" ]; then
    [ -n "$have_torch" ] || { echo "bootstrap: installing ${PIXELMILL_TORCH} (PIXELMILL_TORCH)"; install "${PIXELMILL_TORCH}"; }
elif [ "torch==$have_torch" != "$torch_req" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "bootstrap: NVIDIA GPU found: installing the CUDA build of $torch_req"
        install "$torch_req"
    elif [ -n "${PIXELMILL_TORCH_INDEX:-}" ]; then
        echo "bootstrap: no NVIDIA GPU: installing the CPU build of $torch_req from $PIXELMILL_TORCH_INDEX"
        install --no-deps "$torch_req" --index-url "$PIXELMILL_TORCH_INDEX"
    else
        echo "bootstrap: no NVIDIA GPU: installing the CPU build of $torch_req"
        # torch's own dependencies (sympy, networkx, ...) are in the lock, installed next.
        install --no-index --no-deps "$torch_req" 2>/dev/null \
            || install --no-deps "$torch_req" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
if [ -n "$extras" ]; then
    # The dashboard's browser test drives Debian's Chromium through its chromedriver; nothing is
    # downloaded at test time. Install them when missing and we can (root with apt); otherwise
    # that test skips and says why (and fails under CI=true).
    if [ -n "$browser_missing" ]; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            echo "bootstrap: installing chromium and chromium-driver (apt) for the dashboard test"
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
                || echo "bootstrap: warning: could not install chromium; the browser test will skip (fail under CI)" >&2
        else
            echo "bootstrap: chromium/chromedriver missing and apt-get unavailable (or not root): the browser test will skip" >&2
        fi
    fi
fi
# --no-deps: exactly the locked versions, nothing resolved afresh; `pip check` then proves the
# locked set is complete and consistent.
echo "bootstrap: installing $lock"
install --no-deps -r "$lock" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
install --no-deps -e . 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check >&2; echo "bootstrap: the installed packages do not fit together (see above)" >&2; exit 1; }

if .venv/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-' && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "bootstrap: warning: CUDA packages are installed on a machine without an NVIDIA GPU" >&2
fi
echo "bootstrap: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
