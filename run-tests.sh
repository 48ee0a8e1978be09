#!/usr/bin/env bash
# Set up ./venv-kokoro if needed (as start-kokoro.sh does) and run the whole test suite.
# Extra arguments go to pytest, e.g. ./run-tests.sh -k protocol
set -euo pipefail
cd "$(dirname "$0")"
./start-kokoro.sh --setup-only
exec ./venv-kokoro/bin/python -m pytest "$@"
