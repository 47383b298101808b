#!/usr/bin/env bash
# Set up a working recflow checkout: Debian packages, a virtualenv, recflow.
#
#   scripts/setup.sh          what `recflow serve` and the demo need
#   scripts/setup.sh --test   plus what the test suite needs
#
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Debian packages: speech and audio tools make real recordings for the demo
# and the tests; redis-server backs the Redis tests.
debs=(python3-venv espeak-ng sox)
# The benchmarks smoke test drives wrk and the Go webhook runner.
[ "$want_test" = 1 ] && debs+=(redis-server libsox-fmt-mp3 wrk webhook)
missing=()
for pkg in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then
        echo "setup: installing Debian packages: ${missing[*]}"
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: please install these Debian packages: ${missing[*]}" >&2
    fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
log=$(mktemp)
quiet() { "$@" >"$log" 2>&1 || { cat "$log" >&2; echo "setup: failed: $*" >&2; exit 1; }; }
quiet .venv/bin/python -m pip install --upgrade pip

extras="demo"
[ "$want_test" = 1 ] && extras="demo,test"
echo "setup: installing recflow[$extras] and plugins/recflow-transcribe into .venv"
quiet .venv/bin/python -m pip install -e ".[$extras]" -e plugins/recflow-transcribe
if [ "$want_test" = 1 ]; then
    # The actions the durability tests count runs with, installed with pip
    # like any third-party plugin but into a folder of their own, which only
    # the tests put on the path: `recflow` in .venv never offers them.
    quiet .venv/bin/python -m pip install --no-deps --upgrade --target tests/.plugins \
        tests/plugins/recflow-testactions
fi
rm -f "$log"
