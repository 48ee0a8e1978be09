#!/usr/bin/env bash
# Set up ./venv-kokoro if needed (as start-kokoro.sh does) and run the whole test suite.
# Extra arguments go to pytest, e.g. ./run-tests.sh -k protocol
# The operator page's browser test needs Debian's chromium; it is installed here when missing.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -x /usr/bin/chromium ]]; then
    echo "run-tests.sh: installing Debian's chromium for the operator page's browser test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        || echo "run-tests.sh: could not install chromium; the browser test will fail" >&2
fi
./start-kokoro.sh --setup-only
exec ./venv-kokoro/bin/python -m pytest "$@"
