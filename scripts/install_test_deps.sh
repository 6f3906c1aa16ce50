#!/usr/bin/env bash
# Make sure the tests that drive real engines have them: Chromium at /usr/bin/chromium (the browser
# test, Debian's `chromium`), PostgreSQL's server binaries, initdb and pg_ctl (the private
# clusters of tests/engines.py, Debian's `postgresql`) and exiftool (the XMP sidecar test, Debian's
# `libimage-exiftool-perl`). Whatever is missing comes in one apt-get call.
# Idempotent, and never fails the build: without root or apt the tests that need a missing engine
# skip with a reason (which fails under CI=true, tests/conftest.py).
set -u

BROWSER=/usr/bin/chromium

# Where initdb lives; the same search as tests/engines.py's postgres_bindir.
postgres_bindir() {
    local dir
    dir=$(pg_config --bindir 2>/dev/null) && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
    done
    dir=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || echo /nonexistent)")")
    [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
    return 1
}

missing=()
if [ -x "$BROWSER" ]; then
    echo "install_test_deps: $BROWSER present ($("$BROWSER" --version 2>/dev/null || echo 'version unknown'))"
else
    missing+=(chromium)
fi
if bindir=$(postgres_bindir); then
    echo "install_test_deps: PostgreSQL server binaries present in $bindir ($("$bindir/initdb" --version 2>/dev/null || echo 'version unknown'))"
else
    missing+=(postgresql)
fi

if command -v exiftool >/dev/null 2>&1; then
    echo "install_test_deps: exiftool present ($(exiftool -ver 2>/dev/null || echo 'version unknown'))"
else
    missing+=(libimage-exiftool-perl)  # reads back the XMP sidecars `multitag tag --xmp` writes
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_deps: missing ${missing[*]} and apt-get unavailable; install Chromium at $BROWSER and" \
         "PostgreSQL's initdb/pg_ctl to run tests/test_browser.py and the PostgreSQL tests (they skip until then)."
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_test_deps: missing ${missing[*]}; run as root:" \
         "apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" \
         "(the tests that need them skip until then)."
    exit 0
fi

echo "install_test_deps: installing Debian's ${missing[*]}"
if DEBIAN_FRONTEND=noninteractive apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    [ -x "$BROWSER" ] && echo "install_test_deps: $("$BROWSER" --version 2>/dev/null || echo chromium) at $BROWSER"
    bindir=$(postgres_bindir) && echo "install_test_deps: PostgreSQL server binaries in $bindir"
else
    echo "install_test_deps: apt-get could not install ${missing[*]}; the tests that need them will skip."
fi
exit 0
