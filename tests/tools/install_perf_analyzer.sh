#!/usr/bin/env bash
# Install NVIDIA's perf_analyzer (PyPI `perf-analyzer`) under build/perf-analyzer for the tests, once.
#
# Every perf-analyzer wheel that has the binary (2.58.0 and later) is tagged manylinux_2_38: it needs glibc 2.38
# and GCC 13's libstdc++ (GLIBCXX_3.4.32). Debian 12 has glibc 2.36. Where the host's glibc is older, the binary runs
# through the dynamic loader of Debian 13 (trixie): libc6, libstdc++6, libgcc-s1, libssl3t64 and zlib1g are fetched
# with `apt-get download` (a private apt state under build/, the system's sources untouched) and unpacked beside
# the binary; a wrapper runs `ld-linux-x86-64.so.2 --library-path ... perf_analyzer`. Nothing is installed into the
# system. Usage: install_perf_analyzer.sh [DEST] (default build/perf-analyzer); PYTHON names the pip to use.
set -euo pipefail

DEST=$(realpath -m "${1:-build/perf-analyzer}")
VERSION=2.60.0
PYTHON=${PYTHON:-.venv/bin/python}
SUITE=trixie
WRAPPER="$DEST/perf_analyzer"

if [ -x "$WRAPPER" ] && "$WRAPPER" --version 2>/dev/null | grep -q "Perf Analyzer"; then
  exit 0
fi
echo "installing perf_analyzer $VERSION into $DEST"
rm -rf "$DEST"
mkdir -p "$DEST/wheel"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
  --python-version 3.11 -d "$DEST/wheel" "perf-analyzer==$VERSION"
"$PYTHON" - "$DEST" <<'PY'
import sys, zipfile, pathlib
dest = pathlib.Path(sys.argv[1])
wheel = next((dest / "wheel").glob("perf_analyzer-*.whl"))
with zipfile.ZipFile(wheel) as z:
    (dest / "perf_analyzer.bin").write_bytes(z.read("perf_analyzer/bin/perf_analyzer"))
(dest / "perf_analyzer.bin").chmod(0o755)
PY

glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
if printf '%s\n2.38\n' "$glibc" | sort -V -C 2>/dev/null && [ "$glibc" != "2.38" ]; then
  # glibc older than 2.38: run it through Debian 13's loader and libraries
  apt_dir="$DEST/apt"
  mkdir -p "$apt_dir/parts" "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$DEST/debs" "$DEST/sysroot"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main" \
    > "$apt_dir/sources.list"
  apt_opts=(-o "Dir::State=$apt_dir/state" -o "Dir::Cache=$apt_dir/cache" -o "Dir::Etc::SourceList=$apt_dir/sources.list"
            -o "Dir::Etc::SourceParts=$apt_dir/parts" -o "Dir::State::status=/var/lib/dpkg/status"
            -o "APT::Sandbox::User=$(id -un)" -o "Debug::NoLocking=1")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$DEST/debs" && apt-get "${apt_opts[@]}" download -qq libc6 libstdc++6 libgcc-s1 libssl3t64 zlib1g)
  for deb in "$DEST"/debs/*.deb; do dpkg-deb -x "$deb" "$DEST/sysroot"; done
  rm -rf "$apt_dir" "$DEST/debs"
  cat > "$WRAPPER" <<'SH'
#!/bin/sh
# perf_analyzer through Debian 13's loader and libraries (it needs glibc 2.38; see tests/tools/install_perf_analyzer.sh)
here=$(dirname "$(readlink -f "$0")")
exec "$here/sysroot/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
  --library-path "$here/sysroot/usr/lib/x86_64-linux-gnu" "$here/perf_analyzer.bin" "$@"
SH
else
  cat > "$WRAPPER" <<'SH'
#!/bin/sh
exec "$(dirname "$(readlink -f "$0")")/perf_analyzer.bin" "$@"
SH
fi
chmod 755 "$WRAPPER"
rm -rf "$DEST/wheel"
"$WRAPPER" --version
