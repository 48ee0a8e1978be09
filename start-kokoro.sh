#!/usr/bin/env bash
# Start the Kokoro TTS service. On first run (or when requirements.txt changed) it creates
# ./venv-kokoro with Python 3.11 and installs requirements.txt, then starts the service.
#
#   ./start-kokoro.sh [service options]   start (see ./start-kokoro.sh --help)
#   ./start-kokoro.sh --setup-only        only create/update the virtual environment (and, with
#                                         KOKORO_ONNX_GRAPH=fast, build the fast ONNX graph)
#
# Every KOKORO_* variable (KOKORO_VOICE, KOKORO_TCP_PORT, KOKORO_UDP_PORT, KOKORO_DEVICE,
# KOKORO_ENGINE, KOKORO_VOICES_DIR, KOKORO_MODEL, KOKORO_DB, ...) reaches the service as
# the default of the matching option. KOKORO_PYTHON picks the interpreter (python3.11).
set -euo pipefail
cd "$(dirname "$0")"

VENV=./venv-kokoro
PYTHON=${KOKORO_PYTHON:-python3.11}

die() { echo "start-kokoro.sh: $*" >&2; exit 2; }

for var in KOKORO_TCP_PORT KOKORO_UDP_PORT KOKORO_PROCESSOR_BASE_PORT KOKORO_METRICS_PORT; do
    value=${!var:-}
    if [[ -n "$value" ]] && ! [[ "$value" =~ ^[0-9]+$ && "$value" -ge 1 && "$value" -le 65535 ]]; then
        die "$var='$value' is not a port number (1-65535)"
    fi
done
if [[ -n "${KOKORO_HTTP_PORT:-}" ]] && ! [[ "$KOKORO_HTTP_PORT" =~ ^[0-9]+$ && "$KOKORO_HTTP_PORT" -le 65535 ]]; then
    die "KOKORO_HTTP_PORT='$KOKORO_HTTP_PORT' is not a port number (1-65535, or 0 to turn HTTP off)"
fi
if [[ -n "${KOKORO_DEVICE:-}" && ! "$KOKORO_DEVICE" =~ ^(mps|cuda|cpu)$ ]]; then
    die "KOKORO_DEVICE='$KOKORO_DEVICE' must be mps, cuda or cpu"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "Python 3.11 is required: '$PYTHON' not found (set KOKORO_PYTHON)"
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
        || die "Python 3.11 is required: '$PYTHON' does not run (set KOKORO_PYTHON)"
    [[ "$version" == "3.11" ]] || die "Python 3.11 is required; '$PYTHON' is Python $version (set KOKORO_PYTHON)"
    echo "start-kokoro.sh: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
if [[ ! -f "$VENV/.installed" || requirements.txt -nt "$VENV/.installed" ]]; then
    echo "start-kokoro.sh: installing requirements.txt into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    touch "$VENV/.installed"
fi
# The fast ONNX graph is built only for those who ask for it (256 MB on disk, seconds of CPU):
# here at set-up with KOKORO_ONNX_GRAPH=fast, else at the first start with --onnx-graph fast.
if [[ "${1:-}" == "--setup-only" && "${KOKORO_ONNX_GRAPH:-}" == "fast" ]]; then
    "$VENV/bin/python" -m kokoro_daemon.engines.fast_graph >/dev/null
fi

if [[ "${1:-}" == "--setup-only" ]]; then
    exit 0
fi
exec "$VENV/bin/python" kokoro_service.py "$@"
