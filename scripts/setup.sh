#!/usr/bin/env bash
# Brings a fresh Debian bookworm machine to a working vstreamd build; idempotent.
#
# - Debian packages: GStreamer development files and the plugins the tests use,
#   protobuf-compiler, pkg-config.
# - libtorch for `tch` 0.26 (PyTorch 2.13.0): the PyPI wheel's shared libraries,
#   installed with --no-deps into a fixed prefix. `.cargo/config.toml` points
#   LIBTORCH at it and build.rs adds an rpath, so plain cargo build/test/run work.
#   A user with their own libtorch sets LIBTORCH (see README) and skips this part
#   with VSTREAMD_SKIP_LIBTORCH=1.
#
# A second run on a ready machine only checks and returns in seconds.
set -euo pipefail

TORCH_VERSION=2.13.0
CUDA_RUNTIME_VERSION=13.0.96
CUDA_CUPTI_VERSION=13.0.85
PREFIX="${VSTREAMD_DEPS:-/opt/vstreamd}"
TORCH_PREFIX="$PREFIX/torch-$TORCH_VERSION"

APT_PACKAGES=(
  pkg-config protobuf-compiler prometheus
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
)

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_apt_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "Debian packages: present"
    return
  fi
  log "Debian packages: installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

install_libtorch() {
  if [ "${VSTREAMD_SKIP_LIBTORCH:-0}" = 1 ]; then
    log "libtorch: skipped (VSTREAMD_SKIP_LIBTORCH=1, LIBTORCH=${LIBTORCH:-unset})"
    return
  fi
  local stamp="$TORCH_PREFIX/.complete"
  if [ -f "$stamp" ]; then
    log "libtorch: present in $TORCH_PREFIX"
    return
  fi
  log "libtorch: installing torch==$TORCH_VERSION shared libraries into $TORCH_PREFIX"
  as_root mkdir -p "$PREFIX"
  local staging="$TORCH_PREFIX.partial"
  as_root rm -rf "$staging"
  as_root python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$staging" \
    "torch==$TORCH_VERSION" \
    "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" \
    "nvidia-cuda-cupti==$CUDA_CUPTI_VERSION"
  as_root rm -rf "$TORCH_PREFIX"
  as_root mv "$staging" "$TORCH_PREFIX"
  as_root touch "$stamp"
}

install_rust_components() {
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
}

install_apt_packages
install_libtorch
install_rust_components
log "ready"
