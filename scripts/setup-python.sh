#!/usr/bin/env bash
# Creates the Python reference environment vstreamd's fixtures and benchmarks compare
# against (tests/fixtures/llava_ov/make_fixtures.py, scripts/bench_encode.py,
# scripts/make_bench_checkpoint.py); idempotent. No test needs it: the Rust tests read
# the committed fixtures.
#
# - Where: $VSTREAMD_PYREF, default /opt/vstreamd/pyref (a venv).
# - What: pinned torch, torchvision, transformers and the libraries the scripts use, from
#   the package registry through pip. The versions are those the fixtures' goldens were
#   made with; transformers' numerics move between releases, so keep them pinned.
#
# A venv that already imports the pinned torch and transformers is left as it is, so a
# second run returns in seconds. VSTREAMD_PYTHON picks the interpreter that creates the
# venv (default python3, which must be 3.10 or newer).
set -euo pipefail

PYREF="${VSTREAMD_PYREF:-/opt/vstreamd/pyref}"
PYTHON="${VSTREAMD_PYTHON:-python3}"
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
TRANSFORMERS_VERSION=5.23.0
PACKAGES=(
  "torch==$TORCH_VERSION"
  "torchvision==$TORCHVISION_VERSION"
  "transformers==$TRANSFORMERS_VERSION"
  "tokenizers==0.23.3"
  "safetensors==0.8.0"
  "pillow==13.0.0"
  "numpy==2.4.6"
  "num2words==0.5.14"
)

log() { printf '[setup-python] %s\n' "$*" >&2; }

ready() {
  [ -x "$PYREF/bin/python" ] && "$PYREF/bin/python" - "$TORCH_VERSION" "$TRANSFORMERS_VERSION" <<'EOF' 2>/dev/null
import sys
import torch, torchvision, transformers, safetensors, tokenizers, PIL, numpy  # noqa: F401
ok = torch.__version__.split("+")[0] == sys.argv[1] and transformers.__version__ == sys.argv[2]
sys.exit(0 if ok else 1)
EOF
}

if ready; then
  log "present: $PYREF (torch $TORCH_VERSION, transformers $TRANSFORMERS_VERSION)"
  exit 0
fi

if [ ! -x "$PYREF/bin/python" ]; then
  log "creating venv $PYREF with $($PYTHON --version 2>&1)"
  mkdir -p "$(dirname "$PYREF")"
  "$PYTHON" -m venv "$PYREF"
fi
log "installing ${PACKAGES[*]}"
"$PYREF/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
ready || { log "installed, but $PYREF still does not import the pinned versions"; exit 1; }
log "ready: $PYREF"
