#!/usr/bin/env bash
# Builds libfuse's own passthrough_ll example (the FUSE floor of `fractos fio --target mount
# --compare`) from Debian's fuse3 source package, the same 3.14 as the libfuse3 we link:
# adds a deb-src entry for bookworm main when there is none, `apt-get source --download-only
# fuse3`, compiles example/passthrough_ll.c against the installed libfuse3-dev.
# Usage: bench/build-passthrough-ll.sh [OUT] (default /var/tmp/fractos-fuse3-src/passthrough_ll). Root.
set -euo pipefail
out=${1:-/var/tmp/fractos-fuse3-src/passthrough_ll}
src=$(dirname "$out")
mkdir -p "$src"
if ! grep -rqs '^Types: deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/fractos-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -q
fi
cd "$src"
ls fuse3_*.orig.tar.xz >/dev/null 2>&1 || apt-get source --download-only fuse3
dir=$(tar tf fuse3_*.orig.tar.xz | head -1 | cut -d/ -f1)
[ -d "$dir" ] || tar xf fuse3_*.orig.tar.xz
gcc -O2 -Wall -D_FILE_OFFSET_BITS=64 $(pkg-config --cflags fuse3) -I"$dir" "$dir/example/passthrough_ll.c" -o "$out" $(pkg-config --libs fuse3)
echo "$out"
