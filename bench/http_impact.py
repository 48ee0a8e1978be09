#!/usr/bin/env python3
"""Does HTTP speech slow the phone calls? p95 first audio of 4 calls, with and without HTTP requests.

Starts the service (cache off, HTTP on), keeps 4 phone callers busy (one reply, heard to its
end in real time, then the caller's turn, again), and alternates phases without and with an HTTP client streaming long inputs back to
back, so that both conditions see the same machine load. Target: the calls' p95 time to first
audio with HTTP requests running is at most 1.10 times the p95 without them.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmark import REPLY, ServiceProcess, log, run_call

CALLERS = 4
PAUSE_S = 2.0            # the caller's turn between two replies, once the last one has played
TARGET = 1.10
HTTP_INPUT = ("Here is the summary of your account for this month. Your balance is paid in full and no "
              "payment is due. Your next statement will arrive at the start of next month. Thank you for "
              "being a customer, and have a wonderful day.")


def caller(address, index: int, stop: threading.Event, phase: list[str], ttfa: dict[str, list[float]],
           errors: list[str]) -> None:
    """One phone caller: a reply, heard to its end, its own turn, again; each TTFA filed under the phase it began in."""
    n = 0
    while not stop.is_set():
        began_in = phase[0]
        result = run_call(address, f"caller-{index}-{n}", REPLY)  # named: audio comes straight back
        n += 1
        if result.error or result.first_at is None:
            errors.append(f"caller {index}: {result.error or 'no audio'}")
        elif began_in == phase[0]:   # a reply that straddles a phase change counts for neither
            ttfa[began_in].append(result.ttfa_s)
        played_at = result.first_at + result.audio_s if result.first_at is not None else 0.0
        stop.wait(max(0.0, played_at - time.perf_counter()) + PAUSE_S)


def http_client(port: int, active: threading.Event, idle: threading.Event, stop: threading.Event,
                firsts: list[float], errors: list[str]) -> None:
    """While ``active``: one streamed request after another, reading each to its end; ``idle`` between them."""
    body = json.dumps({"model": "kokoro", "input": HTTP_INPUT, "voice": "am_adam", "response_format": "mp3"}).encode()
    while not stop.is_set():
        if not active.wait(0.2):
            continue
        idle.clear()
        if not active.is_set():
            idle.set()
            continue
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/audio/speech", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=300) as response:
                response.read(1)
                firsts.append(time.perf_counter() - started)
                while response.read(65536):
                    pass
        except OSError as exc:
            errors.append(f"HTTP: {exc}")
        finally:
            idle.set()


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


def run(args) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    service = ServiceProcess(args.voices_dir, args.out / "http_impact-service.log", cache_mb=0, http=True)
    try:
        service.wait_ready()
        stop, http_on, http_idle = threading.Event(), threading.Event(), threading.Event()
        http_idle.set()
        phase = ["calls only"]
        ttfa: dict[str, list[float]] = {"calls only": [], "calls + HTTP": []}
        http_firsts: list[float] = []
        errors: list[str] = []
        threads = [threading.Thread(target=caller, args=(service.address, i, stop, phase, ttfa, errors))
                   for i in range(CALLERS)]
        threads.append(threading.Thread(target=http_client,
                                        args=(service.http_port, http_on, http_idle, stop, http_firsts, errors)))
        for thread in threads:
            thread.start()
        for round_ in range(args.rounds):
            for name in ("calls only", "calls + HTTP"):
                if name == "calls only":   # no HTTP request may still be running in this phase
                    http_on.clear()
                    http_idle.wait()
                phase[0] = name
                if name == "calls + HTTP":
                    http_on.set()
                log(f"round {round_ + 1}/{args.rounds}: {name} for {args.phase_s:.0f} s")
                time.sleep(args.phase_s)
        stop.set()
        http_on.clear()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        service.stop()
    if errors:
        print("errors:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    without, with_http = p95(ttfa["calls only"]), p95(ttfa["calls + HTTP"])
    report = {"callers": CALLERS, "pause_s": PAUSE_S, "rounds": args.rounds, "phase_s": args.phase_s,
              "replies": {name: len(values) for name, values in ttfa.items()},
              "ttfa_p50_s": {name: float(np.median(values)) for name, values in ttfa.items() if values},
              "ttfa_p95_s": {"calls only": without, "calls + HTTP": with_http},
              "ratio_p95": with_http / without, "target": TARGET, "pass": with_http / without <= TARGET,
              "http_requests": len(http_firsts), "http_first_byte_p50_s": float(np.median(http_firsts)),
              "ttfa_all_s": ttfa}
    print(f"\n{CALLERS} phone calls (reply played, {PAUSE_S:.0f} s turn, again), cache off, {args.rounds} rounds of "
          f"{args.phase_s:.0f} s per phase, interleaved")
    for name in ttfa:
        print(f"  {name:14s} {report['replies'][name]:4d} replies   first audio p50 "
              f"{report['ttfa_p50_s'][name]:.2f} s   p95 {report['ttfa_p95_s'][name]:.2f} s")
    print(f"  HTTP: {len(http_firsts)} requests, first bytes after {report['http_first_byte_p50_s']:.2f} s (p50)")
    print(f"p95 with HTTP / without: {report['ratio_p95']:.2f} (target <= {TARGET:.2f}): "
          f"{'PASS' if report['pass'] else 'FAIL'}")
    (args.out / "http_impact.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices-dir", type=Path, default=root.parent / "shared" / "voices" / "v1_0")
    parser.add_argument("--out", type=Path, default=root / "bench" / "results")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of phases (default 3)")
    parser.add_argument("--phase-s", type=float, default=30.0, help="seconds per phase (default 30)")
    args = parser.parse_args()
    args.voices_dir = args.voices_dir.resolve()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
