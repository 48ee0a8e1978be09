#!/usr/bin/env python3
"""Kokoro TTS service for the phone system: LLaMA text in on TCP 8090, audio frames out.

Run ``kokoro_service.py --help`` for the options; see KOKORO_INTEGRATION.md for the protocol.
"""
import sys

from kokoro_daemon.cli import main

if __name__ == "__main__":
    sys.exit(main())
