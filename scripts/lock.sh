#!/usr/bin/env bash
# Refresh the lock files in locks/ from the ranges in pyproject.toml.
#
#   scripts/lock.sh            # re-resolve with the newest versions the ranges allow
#   scripts/lock.sh --check    # exit 1 when locks/ is out of date with pyproject.toml
#
# locks/server.txt pins what `scripts/bootstrap.sh` installs, locks/test.txt what
# `scripts/bootstrap.sh --test` (and so CI) installs. Both are resolved by uv (pinned below)
# for the Python the tests run with (3.11, Linux x86_64), with torch held at TORCH_VERSION.
#
# torch itself is not in the locks: bootstrap installs the build that fits the machine first
# (the CPU build without an NVIDIA GPU, the CUDA build with one), at the version in
# locks/torch.txt. Packages only the CUDA build needs (nvidia-*, cuda-*, triton) are left
# out for the same reason; a CUDA install of torch brings them itself.
#
# After a refresh: run the whole test suite from a fresh `scripts/bootstrap.sh --test`
# (rm -rf .venv first) before committing the new locks; the locks must be what the tests
# ran with. tests/unit/test_lock.py checks that the locks satisfy pyproject.toml's ranges and
# that the test environment is the locked one.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=$(grep -E '^uv==' locks/uv.txt | cut -d= -f3)
TORCH_VERSION=$(grep -E '^torch==' locks/torch.txt | cut -d= -f3)
PY=3.11

uv=$(command -v uv || true)
if [ -z "$uv" ] || [ "$("$uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    [ -x .venv-lock/bin/uv ] || { python3 -m venv .venv-lock && .venv-lock/bin/pip -q install "uv==$UV_VERSION"; }
    uv=.venv-lock/bin/uv
fi

out=${1:-}
dir=locks
if [ "$out" = "--check" ]; then
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
fi

compile() {  # compile <output> [uv args...]
    local target=$1; shift
    local tmp; tmp=$(mktemp)
    echo "torch==$TORCH_VERSION" >"$tmp.constraints"
    # First pass: find the CUDA-only packages this torch would bring, to leave them out.
    "$uv" pip compile -q pyproject.toml --python-version "$PY" -c "$tmp.constraints" "$@" -o "$tmp"
    local skip=(--no-emit-package torch)
    for name in $(grep -oE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' "$tmp" | tr -d '='); do
        skip+=(--no-emit-package "$name")
    done
    "$uv" pip compile -q pyproject.toml --python-version "$PY" -c "$tmp.constraints" "$@" "${skip[@]}" \
        --custom-compile-command "scripts/lock.sh" --no-strip-extras -o "$target"
    rm -f "$tmp" "$tmp.constraints"
}

if [ "$out" = "--check" ]; then
    # --check keeps the locked versions (no upgrade): it only asks whether pyproject.toml
    # still resolves to exactly what is locked.
    cp locks/server.txt locks/test.txt "$dir"/
    compile "$dir/server.txt"
    compile "$dir/test.txt" --extra test -c locks/server.txt
    if diff -q "$dir/server.txt" locks/server.txt >/dev/null && diff -q "$dir/test.txt" locks/test.txt >/dev/null; then
        echo "lock: locks/ agree with pyproject.toml"
    else
        diff -u locks/test.txt "$dir/test.txt" || true
        echo "lock: locks/ are out of date with pyproject.toml: run scripts/lock.sh" >&2
        exit 1
    fi
else
    rm -f locks/server.txt locks/test.txt
    compile locks/server.txt --upgrade
    compile locks/test.txt --extra test -c locks/server.txt --upgrade
    echo "lock: wrote locks/server.txt and locks/test.txt (torch $TORCH_VERSION installed separately)"
fi
