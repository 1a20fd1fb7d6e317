#!/usr/bin/env bash
# Installs what FractOS-TS needs on a fresh Debian machine (run as root), then the npm
# packages, then builds the native addons and the TypeScript. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# One package per line (branches add theirs without touching others').
pkgs=(
  liburing-dev
  fio
  util-linux
  build-essential
  python3
  etcd-server
  etcd-client
  chromium
  iproute2
  libssl-dev
  libfuse3-dev
  fuse3
  pkg-config
)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
  else
    sudo apt-get update
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
  fi
fi
npm ci --no-audit --no-fund
npm run build
