#!/usr/bin/env python3
"""Segmenter cost against text size: one chunk of each shape, doubling in size.

Prints the CPU seconds to segment the chunk and finish, the microseconds per character,
and the growth from the previous size: about 2 per doubling is linear, 4 is quadratic.
The target is linear growth (at most 2.5 per doubling) for every shape.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kokoro_daemon.segmenter import split_text  # noqa: E402

SHAPES = {
    "words": "alpha ",
    "words with commas": "word, ",
    "one long word": "a",
    "short sentences": "Hi. ",
    "dots and spaces": ". ",
    "blank lines": "\n\n",
}
GROWTH_TARGET = 2.5


def cpu_seconds(text: str) -> float:
    started = time.process_time()
    split_text(text)
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-kib", type=int, default=64)
    parser.add_argument("--max-mib", type=float, default=4.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sizes = [args.min_kib * 1024]
    while sizes[-1] * 2 <= args.max_mib * 1024 * 1024:
        sizes.append(sizes[-1] * 2)
    results, missed = [], []
    print(f"{'shape':18s} {'chars':>10s} {'cpu s':>8s} {'us/char':>8s} {'growth':>7s}")
    for shape, unit in SHAPES.items():
        previous = None
        for size in sizes:
            seconds = cpu_seconds((unit * (size // len(unit) + 1))[:size])
            growth = seconds / previous if previous else None
            previous = seconds
            results.append({"shape": shape, "chars": size, "cpu_s": round(seconds, 4), "growth": growth})
            shown = f"{growth:7.2f}" if growth else ""
            print(f"{shape:18s} {size:10d} {seconds:8.3f} {seconds / size * 1e6:8.3f} {shown}", flush=True)
            # below 50 ms the clock's noise decides the ratio
            if growth and growth > GROWTH_TARGET and seconds > 0.05:
                missed.append(f"{shape} at {size} chars: growth {growth:.2f}")
    print("target missed: " + "; ".join(missed) if missed else f"every shape grows by at most {GROWTH_TARGET} per doubling")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "missed": missed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
