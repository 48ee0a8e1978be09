#!/usr/bin/env bash
# Set up ./venv-kokoro if needed (as start-kokoro.sh does) and run the test suite.
#
#   ./run-tests.sh            the whole suite, independent tests side by side (pytest-xdist)
#   ./run-tests.sh --quick    the inner loop (under a minute): the tests marked slow or judge left out
#
# Extra arguments go to pytest, e.g. ./run-tests.sh -k protocol, or -n 0 to run one test at a time.
# KOKORO_TEST_WORKERS sets how many tests run at once (default 4, many wait on real-time playout; 2 quick).
# Debian's chromium (the operator page's browser test) and haproxy (the deployment test) are
# installed here when missing.
set -euo pipefail
cd "$(dirname "$0")"

install_debian() {  # package, what needs it
    if ! dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; then
        echo "run-tests.sh: installing Debian's $1 for $2" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; } \
            || echo "run-tests.sh: could not install $1; $2 will fail" >&2
    fi
}
install_debian chromium "the operator page's browser test"
install_debian haproxy "the deployment test (tests/test_deploy.py)"
./start-kokoro.sh --setup-only

if [[ "${1:-}" == "--quick" ]]; then
    shift
    # two workers: each loads the model once, and the quick tests are short
    exec ./venv-kokoro/bin/python -m pytest -n "${KOKORO_TEST_WORKERS:-2}" --dist worksteal -m "not slow and not judge" "$@"
fi
exec ./venv-kokoro/bin/python -m pytest -n "${KOKORO_TEST_WORKERS:-4}" --dist worksteal "$@"
