#!/usr/bin/env bash
# Set up everything this project needs on a fresh machine; safe to run again (idempotent).
#  - a virtualenv in .venv with torch/torchvision pinned to the builds on this machine's disk
#    (see shared/ENVIRONMENT.md: an unpinned torch resolves to a multi-GB download),
#  - this package in editable mode with its test extras,
#  - Fashion-MNIST from Debian's package dataset-fashion-mnist (the main job's data).
set -euo pipefail
cd "$(dirname "$0")/.."

pip_install() {
  local log
  log=$(mktemp)
  if ! .venv/bin/pip install --disable-pip-version-check -q "$@" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; return 1
  fi
  # pip's configuration names local index folders that may not hold every package: noise.
  grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
  rm -f "$log"
}

FASHION=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FASHION" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
        >/dev/null; } || true
  elif command -v sudo >/dev/null; then
    { sudo -n apt-get update -qq >/dev/null && sudo -n DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        dataset-fashion-mnist >/dev/null; } || true
  fi
  [ -f "$FASHION" ] || echo "setup: warning: Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist);" \
    "deit demo needs it, or --data-dir with the four IDX files" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip_install torch==2.14.1 torchvision==0.29.1
pip_install -e '.[test]'
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, timm; print(f"torch {torch.__version__}, timm {timm.__version__}")'))"
