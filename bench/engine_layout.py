#!/usr/bin/env python3
"""One ONNX session on every core against several sessions with fewer threads each, on this machine.

For each layout (workers x intra-op threads per session) it measures, interleaved over rounds:
latency, the time one segment takes on an otherwise idle engine (what a lone caller waits for),
and throughput, audio seconds per wall second while every worker is kept busy with its own
segments (what many callers share). See bench/README.md.
"""
from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

from benchmark import REPLY, BareEngine, bench_arguments, log, machine_info, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kokoro_daemon.segmenter import split_text  # noqa: E402

SHARED = ROOT.parent / "shared"
PHRASES = [line.strip() for line in (SHARED / "speech-judge" / "phrases.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]


def layouts(cores: int) -> list[tuple[int, int]]:
    """(workers, threads each): one session on all cores; one single-thread session per core; and one
    all-core session per core, which share the cores when all are busy and use them all when one is."""
    return [(1, cores), (cores, 1), (cores, cores)]


def latency_s(engines: list[BareEngine], text: str, repeats: int) -> float:
    return statistics.median(engines[0].speak(text)["wall_s"] for _ in range(repeats))


def throughput(engines: list[BareEngine], texts: list[str]) -> float:
    """Audio seconds per wall second with every engine pulling the next text until all are spoken."""
    queue, lock, audio = list(texts), threading.Lock(), []

    def work(engine: BareEngine) -> None:
        while True:
            with lock:
                if not queue:
                    return
                text = queue.pop()
            result = engine.speak(text)
            with lock:
                audio.append(result["audio_s"])

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(audio) / (time.perf_counter() - started)


def run(args) -> int:
    cores = os.cpu_count() or 1
    began = time.perf_counter()
    first_segment = split_text(REPLY)[0]
    texts = PHRASES[: 8 if args.quick else 20]
    pools = {layout: [BareEngine(args.voices_dir, threads=layout[1]) for _ in range(layout[0])]
             for layout in layouts(cores)}
    for engines in pools.values():
        for engine in engines:
            engine.speak(REPLY)  # first inference is slow
    figures = {layout: {"latency_s": [], "throughput": []} for layout in pools}
    for round_ in range(1 if args.quick else 3):
        for layout, engines in pools.items():
            log(f"round {round_ + 1}: {layout[0]} worker(s) x {layout[1]} thread(s)")
            figures[layout]["latency_s"].append(latency_s(engines, first_segment, 3))
            figures[layout]["throughput"].append(throughput(engines, texts))
    base = layouts(cores)[0]
    rows = {}
    for layout, values in figures.items():
        latency, rate = statistics.median(values["latency_s"]), statistics.median(values["throughput"])
        rows[f"{layout[0]}x{layout[1]}"] = {
            "workers": layout[0], "threads_each": layout[1], "latency_s": latency, "latency_all_s": values["latency_s"],
            "audio_s_per_wall_s": rate, "throughput_all": values["throughput"],
            "latency_over_one_session": latency / statistics.median(figures[base]["latency_s"]),
            "throughput_over_one_session": rate / statistics.median(figures[base]["throughput"])}
    print(f"\nengine layouts on {cores} cores (latency: the service's first segment on an idle engine; "
          f"throughput: {len(texts)} phone phrases, every worker busy)")
    print(f"{'layout':12s}{'latency s':>12s}{'x 1 session':>13s}{'audio s/s':>12s}{'x 1 session':>13s}")
    for name, row in rows.items():
        print(f"{name:12s}{row['latency_s']:12.3f}{row['latency_over_one_session']:13.2f}"
              f"{row['audio_s_per_wall_s']:12.2f}{row['throughput_over_one_session']:13.2f}")
    report = {"machine": {**machine_info(), "loadavg_at_end": os.getloadavg()}, "layouts": rows,
              "first_segment": first_segment, "texts": texts, "benchmark_wall_s": time.perf_counter() - began}
    write_results(report, args.out / "engine_layout.json", plot, args.out / "engine_layout.png")
    return 0


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(report["layouts"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
    left.bar(names, [report["layouts"][n]["latency_s"] for n in names])
    left.set_ylabel("one segment, idle engine (s)")
    right.bar(names, [report["layouts"][n]["audio_s_per_wall_s"] for n in names])
    right.set_ylabel("audio s per wall s, all busy")
    for ax in (left, right):
        ax.set_xlabel("workers x threads")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "engine_layout.json, engine_layout.png")
    parser.add_argument("--quick", action="store_true", help="one round over 8 phrases: a smoke check")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
