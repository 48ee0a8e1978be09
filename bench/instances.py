#!/usr/bin/env python3
"""Instance layouts: one service on every core against several pinned instances behind HAProxy.

The conversation benchmark (bench/conversation.py: whole replies from one emulated LLaMA client,
dial-in processors playing in real time, cache off, the playout scheduler) runs against each
layout through HAProxy on deploy/haproxy.cfg, level by level, the layouts interleaved so that a
noisy spell on the machine falls on both. A layout sustains N calls when the p95 first audio is
within 2x the single-call figure (one figure for both layouts), silence inside replies is at
most 1 % of the audio, and nothing is erased or goes wrong. See bench/README.md.
"""
from __future__ import annotations

import os
import sys
import time

from benchmark import BenchmarkError, machine_info, write_results
from conversation import LEVELS, calls_sustained, conversation_arguments, fmt, run_levels, services_under_test


def layouts(cores: list[int], per_instance: list[int]) -> dict[str, list[set[int] | None]]:
    """Each layout: one entry per instance, the cores it is pinned to (None: not pinned). One instance on
    every core, then, for each k of ``per_instance``, as many instances of k cores as the cores allow."""
    found: dict[str, list[set[int] | None]] = {f"1 instance x {len(cores)} cores": [None]}
    for k in per_instance:
        if 0 < k < len(cores):
            found[f"{len(cores) // k} instances x {k} core(s)"] = [set(cores[i:i + k])
                                                                  for i in range(0, len(cores) - k + 1, k)]
    return found


def print_report(report: dict) -> None:
    print(f"\nInstance layouts behind HAProxy ({report['machine']['cpu_count']} CPUs, {report['turns']} turns per "
          f"call, cache off); single-call p95 first audio {report['single_call_first_audio_p95_s']:.3f} s")
    header = ("calls", "first p50", "p95", "max", "gaps>0.1", "gap s", "longest", "audio/wall", "verdict")
    for name, levels in report["levels"].items():
        print(f"\n{name}: calls sustained {report['sustained'][name]}")
        print("".join(f"{h:>11s}" for h in header))
        for calls, level in sorted(levels.items(), key=lambda kv: int(kv[0])):
            print(f"{calls:>11}" + "".join(f"{fmt(v):>11s}" for v in (
                level["first_audio_p50_s"], level["first_audio_p95_s"], level["first_audio_max_s"]))
                + f"{level['gaps_over_100ms']:>11}" + "".join(f"{fmt(v):>11s}" for v in (
                    level["gap_total_s"], level["gap_longest_s"], level["audio_per_wall_s"]))
                + f"{'SHORT' if level['shortfalls'] else 'ok':>11s}")
            for reason in level["shortfalls"]:
                print(f"{'':11s}  {reason}")


def plot(report: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (first, gaps) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, levels), marker in zip(report["levels"].items(), ("o-", "s--")):
        ordered = sorted(levels.items(), key=lambda kv: int(kv[0]))
        calls = [int(n) for n, _ in ordered]
        first.plot(calls, [lv["first_audio_p95_s"] or float("nan") for _, lv in ordered], marker, label=name)
        gaps.plot(calls, [lv["gap_total_s"] for _, lv in ordered], marker, label=name)
    first.set_ylabel("p95 time to first audio played (s)")
    gaps.set_ylabel("silence inside replies (s)")
    for ax in (first, gaps):
        ax.set_xlabel("simultaneous calls")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Kokoro service instance layouts behind HAProxy, cache off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    cores = sorted(os.sched_getaffinity(0))
    candidates = layouts(cores, args.cores_per_instance or [1])
    levels = tuple(n for n in LEVELS if n <= args.max_calls)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    began = time.perf_counter()
    specs = {name: {"schedule": "playout", "log_path": args.out / f"instances-layout{n}.log", "synthesis": "whole",
                    "cpus": cpus} for n, (name, cpus) in enumerate(candidates.items(), 1)}
    try:
        with services_under_test(specs, args.voices_dir, sum(levels)) as services:
            startup = {name: service.wait_ready() for name, service in services.items()}
            results, single_call_s = run_levels(services, levels, args.turns, args.seed, args.turn_timeout_s,
                                                args.every_level)
    except BenchmarkError as exc:
        print(f"\n*** BENCHMARK FAILED ***\n{exc}", file=sys.stderr)
        return 1
    machine["loadavg_at_end"] = os.getloadavg()
    report = {"turns": args.turns, "seed": args.seed, "levels_planned": levels, "machine": machine,
              "layouts": {name: [sorted(c) if c else None for c in cpus] for name, cpus in candidates.items()},
              "startup": startup, "single_call_first_audio_p95_s": single_call_s,
              "sustained": {name: calls_sustained(levels) for name, levels in results.items()},
              "levels": results, "benchmark_wall_s": time.perf_counter() - began}
    print_report(report)
    write_results(report, args.out / "instances.json", plot, args.out / "instances.png")
    return 0


def main() -> int:
    parser = conversation_arguments(__doc__.splitlines()[0], "instances.json, instances.png", 8)
    parser.add_argument("--cores-per-instance", type=int, action="append",
                        help="also try instances of this many cores each (repeatable; default 1)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
