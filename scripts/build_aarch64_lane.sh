#!/usr/bin/env bash
# Builds the aarch64 lane (edgevit.deploy.aarch64) in $1 (default .aarch64) with $2 (default .venv/bin/python)'s pip:
#   $1/qemu     qemu-aarch64, qemu's user-mode emulator, Debian's qemu-user 10.0 from bookworm-backports (the emulator of Debian 12
#               itself, 7.2, mis-emulates SVE int8 code and crashes onnxruntime >= 1.28 and ai-edge-litert >= 2.2:
#               docs/deploy.md, "On ARM")
#   $1/sysroot  Debian 12's arm64 Python 3.11 and the libraries it links
#   $1/site     the runtimes' aarch64 wheels (requirements-aarch64.txt)
# Nothing on the host changes: apt resolves and downloads the packages with a private state folder and sources
# list in $1/apt (no architecture added to the host's dpkg, nothing installed), and dpkg -x unpacks them.
# Needs: an x86_64 Linux with apt-get and dpkg (Debian or a derivative) and Debian's mirror.
set -euo pipefail
LANE=${1:-.aarch64}
PY=${2:-.venv/bin/python}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}
WORK="$LANE.partial"
rm -rf "$WORK" && mkdir -p "$WORK"/{qemu,sysroot}

# apt with its own state: fetch ARCH SUITE-LIST PACKAGES... downloads the packages and what they depend on
fetch() {
    local arch=$1 sources=$2; shift 2
    local A; A=$(mkdir -p "$WORK/apt-$arch" && cd "$WORK/apt-$arch" && pwd)
    mkdir -p "$A"/{state/lists/partial,cache/archives/partial}
    touch "$A/status"
    printf '%b' "$sources" > "$A/sources.list"
    local opts=(-q -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch" -o "Dir::Etc::sourcelist=$A/sources.list"
                -o Dir::Etc::sourceparts=/nonexistent -o "Dir::State=$A/state" -o "Dir::State::status=$A/status"
                -o "Dir::Cache=$A/cache" -o Debug::NoLocking=1)
    apt-get "${opts[@]}" update > /dev/null
    apt-get "${opts[@]}" install -y --download-only --no-install-recommends "$@" > /dev/null
}
fetch amd64 "deb $MIRROR/debian bookworm-backports main\n" qemu-user
dpkg -x "$(ls "$WORK"/apt-amd64/cache/archives/qemu-user_*.deb)" "$WORK/apt-amd64/root"
mv "$WORK/apt-amd64/root/usr/bin/qemu-aarch64" "$WORK/qemu/"  # (static; the package's other emulators are not kept)
# python3.11 and what it links (libc, libssl, ...); libstdc++ and libgomp for the runtimes' C++ libraries
fetch arm64 "deb $MIRROR/debian bookworm main\ndeb $MIRROR/debian-security bookworm-security main\n" \
    python3.11 libstdc++6 libgomp1
for deb in "$WORK"/apt-arm64/cache/archives/*.deb; do dpkg -x "$deb" "$WORK/sysroot"; done
rm -rf "$WORK"/apt-*

PLATFORMS=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_36; do
    PLATFORMS+=(--platform "${tag}_aarch64")
done
"$PY" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    "${PLATFORMS[@]}" --target "$WORK/site" -r requirements-aarch64.txt
# the lane runs: its Python imports numpy under emulation
PYTHONPATH="$WORK/site" "$WORK/qemu/qemu-aarch64" -L "$WORK/sysroot" "$WORK/sysroot/usr/bin/python3.11" \
    -c "import numpy, platform; assert platform.machine() == 'aarch64'"
rm -rf "$LANE" && mv "$WORK" "$LANE"
echo "aarch64 lane built in $LANE ($(du -sh "$LANE" | cut -f1))"
