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
# - Python gRPC (grpcio, grpcio-tools, grpcio-health-checking, protobuf; pinned) for
#   the test that asks the daemon from an independent client: installed with
#   --no-deps into "$PREFIX/grpc-py-<version>" and used through PYTHONPATH by
#   tests/serve_python.rs; stubs are generated from proto/ at test time.
#
# A second run on a ready machine only checks and returns in seconds.
set -euo pipefail

TORCH_VERSION=2.13.0
CUDA_RUNTIME_VERSION=13.0.96
CUDA_CUPTI_VERSION=13.0.85
GRPC_VERSION=1.85.1
GRPC_PY_PACKAGES=(
  "grpcio==$GRPC_VERSION" "grpcio-tools==$GRPC_VERSION" "grpcio-health-checking==$GRPC_VERSION"
  "protobuf==7.36.2" "typing_extensions==4.16.0" "setuptools==84.2.1"
)
PREFIX="${VSTREAMD_DEPS:-/opt/vstreamd}"
TORCH_PREFIX="$PREFIX/torch-$TORCH_VERSION"
GRPC_PREFIX="$PREFIX/grpc-py-$GRPC_VERSION"

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
  pip_into_prefix "$TORCH_PREFIX" "libtorch (torch==$TORCH_VERSION shared libraries)" \
    "torch==$TORCH_VERSION" \
    "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" \
    "nvidia-cuda-cupti==$CUDA_CUPTI_VERSION"
}

# Installs a pinned package set with pip --no-deps into a fresh prefix, atomically:
# staged beside it and moved into place with a stamp only once complete.
pip_into_prefix() {
  local prefix="$1" what="$2"
  shift 2
  if [ -f "$prefix/.complete" ]; then
    log "$what: present in $prefix"
    return
  fi
  log "$what: installing $* into $prefix"
  as_root mkdir -p "$PREFIX"
  local staging="$prefix.partial"
  as_root rm -rf "$staging"
  as_root python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$staging" "$@"
  as_root rm -rf "$prefix"
  as_root mv "$staging" "$prefix"
  as_root touch "$prefix/.complete"
}

install_rust_components() {
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
}

install_apt_packages
install_libtorch
pip_into_prefix "$GRPC_PREFIX" "Python gRPC" "${GRPC_PY_PACKAGES[@]}"
install_rust_components
log "ready"
