#!/usr/bin/env python3
"""The int8 and the fast ONNX graph side by side, in one interleaved run on this machine.

Every figure is taken for both graphs in alternating order, round after round, and reported
as the ratio fast/int8 with the acceptance targets of issue 12. Memory and start-up are
measured in subprocesses, one per graph, so that each figure is clean. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmark import (REPLY, ROOT, VOICE, BareEngine, BenchmarkError, ServiceProcess, bench_arguments, log,
                       machine_info, run_call)

from kokoro_daemon.engines import create_engine  # noqa: E402
from kokoro_daemon.engines.fast_graph import fast_model_path  # noqa: E402
from kokoro_daemon.g2p import G2PRegistry  # noqa: E402
from kokoro_daemon.segmenter import split_text  # noqa: E402
from kokoro_daemon.synthesis import trim_silence  # noqa: E402
from kokoro_daemon.voices import VoiceLibrary  # noqa: E402

GRAPHS = ("int8", "fast")
SESSIONS = 4
TARGETS = {   # fast/int8 ratios, except start-up: the fast graph's extra seconds
    "first_segment_s": ("<=", 0.85),
    "throughput_1": (">=", 1.15),
    "throughput_4": (">=", 1.15),
    "ready_s": ("<=", 1.0),
}


def rss_mb() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def session_worker(graph: str, phonemes: str, voices_dir: str) -> None:
    """In a fresh process: resident memory before and after loading one session and speaking once."""
    pack = VoiceLibrary(voices_dir).load(VOICE).pack
    before = rss_mb()["VmRSS"]
    began = time.perf_counter()
    engine = create_engine("onnx", onnx_graph=graph)
    load_s = time.perf_counter() - began
    loaded = rss_mb()["VmRSS"]
    engine.synthesize(phonemes, pack)
    after = rss_mb()
    print(json.dumps({"load_s": load_s, "rss_base_mb": before, "session_rss_loaded_mb": loaded - before,
                      "session_rss_after_reply_mb": after["VmRSS"] - before, "peak_rss_mb": after["VmHWM"]}))


def measure_sessions(phonemes: str, voices_dir: Path) -> dict:
    figures = {}
    for graph in GRAPHS:
        log(f"{graph}: session memory, in a subprocess")
        out = subprocess.run([sys.executable, __file__, "--session-worker", graph, "--phonemes", phonemes,
                              "--voices-dir", str(voices_dir)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise BenchmarkError(f"session worker for {graph} failed:\n{out.stderr[-2000:]}")
        figures[graph] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def measure_startup(voices_dir: Path, out: Path, rounds: int) -> dict:
    """The real service to ready (cached fast graph), alternating graphs; RSS at ready and after a reply."""
    runs: dict[str, list[dict]] = {g: [] for g in GRAPHS}
    for r in range(rounds):
        for graph in GRAPHS if r % 2 == 0 else GRAPHS[::-1]:
            log(f"{graph}: service start-up, round {r + 1}")
            service = ServiceProcess(voices_dir, out / f"service-{graph}.log", cache_mb=0,
                                     engine_args=("--engine", "onnx", "--onnx-graph", graph))
            try:
                ready = service.wait_ready()
                ready.update(rss_ready_mb=service.memory_mb()["rss_mb"])
                reply = run_call(service.address, "1", REPLY)
                if reply.error or not reply.frames:
                    raise BenchmarkError(f"{graph} service did not reply: {reply.error}")
                ready.update(rss_after_reply_mb=service.memory_mb()["rss_mb"])
                ready_line = next(line for line in service.lines if "ready in" in line)
                if f"engine onnx ({graph} graph)" not in ready_line:
                    raise BenchmarkError(f"{graph} service's ready line does not name its graph: {ready_line}")
            finally:
                service.stop()
            runs[graph].append(ready)
    return {g: {"ready_s": statistics.median(r["startup_s"] for r in runs[g]),
                "service_reported_s": statistics.median(r["service_reported_s"] for r in runs[g]),
                "rss_ready_mb": statistics.median(r["rss_ready_mb"] for r in runs[g]),
                "rss_after_reply_mb": statistics.median(r["rss_after_reply_mb"] for r in runs[g]),
                "runs": runs[g]} for g in GRAPHS}


def measure_latency(bare: dict[str, BareEngine], rounds: int) -> dict:
    """The service's first segment and the whole reply (1 session, all threads), alternating graphs."""
    first_text = split_text(REPLY)[0]
    runs = {g: {"first": [], "whole": []} for g in GRAPHS}
    for r in range(rounds):
        order = GRAPHS if r % 2 == 0 else GRAPHS[::-1]
        for kind, text in (("first", first_text), ("whole", REPLY)):
            for graph in order:
                runs[graph][kind].append(bare[graph].speak(text))
    return {g: {"first_segment_s": statistics.median(x["wall_s"] for x in runs[g]["first"]),
                "whole_reply_s": statistics.median(x["wall_s"] for x in runs[g]["whole"]),
                "throughput_1": statistics.median(x["audio_s"] / x["wall_s"] for x in runs[g]["whole"]),
                "cpu_per_audio_s_1": statistics.median(x["cpu_s"] / x["audio_s"] for x in runs[g]["whole"]),
                "first_segment_all_s": [x["wall_s"] for x in runs[g]["first"]],
                "whole_reply_all_s": [x["wall_s"] for x in runs[g]["whole"]],
                "whole_reply_cpu_all_s": [x["cpu_s"] for x in runs[g]["whole"]]} for g in GRAPHS}


def concurrent_throughput(engines: list, phonemes: str, pack, jobs: int) -> dict:
    """``len(engines)`` threads, each speaking the reply ``jobs`` times on its own 1-thread session."""
    start = threading.Barrier(len(engines) + 1)
    audio = [0.0] * len(engines)

    def work(i: int) -> None:
        start.wait()
        for _ in range(jobs):
            audio[i] += len(trim_silence(engines[i].synthesize(phonemes, pack), engines[i].sample_rate))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    start.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    audio_s = sum(audio) / engines[0].sample_rate
    return {"wall_s": wall, "audio_s": audio_s, "throughput": audio_s / wall, "cpu_per_audio_s": cpu / audio_s}


def measure_throughput_4(phonemes: str, pack, rounds: int, jobs: int) -> dict:
    log(f"loading {SESSIONS} one-thread sessions of each graph")
    engines = {g: [create_engine("onnx", threads=1, onnx_graph=g) for _ in range(SESSIONS)] for g in GRAPHS}
    for graph in GRAPHS:
        concurrent_throughput(engines[graph], phonemes, pack, 1)   # warm-up
    runs: dict[str, list[dict]] = {g: [] for g in GRAPHS}
    for r in range(rounds):
        for graph in GRAPHS if r % 2 == 0 else GRAPHS[::-1]:
            log(f"{graph}: {SESSIONS} sessions x 1 thread, round {r + 1}")
            runs[graph].append(concurrent_throughput(engines[graph], phonemes, pack, jobs))
    return {g: {"throughput_4": statistics.median(x["throughput"] for x in runs[g]),
                "cpu_per_audio_s_4": statistics.median(x["cpu_per_audio_s"] for x in runs[g]),
                "runs": runs[g]} for g in GRAPHS}


def per_round_ratios(latency: dict, throughput: dict) -> dict:
    """fast/int8 within each round: their spread says how noisy the run was (CPU seconds barely move with load)."""
    def ratios(fast: list[float], int8: list[float]) -> list[float]:
        return [f / i for f, i in zip(fast, int8)]

    fast, int8 = latency["fast"], latency["int8"]
    return {
        "first_segment_s": ratios(fast["first_segment_all_s"], int8["first_segment_all_s"]),
        "whole_reply_s": ratios(fast["whole_reply_all_s"], int8["whole_reply_all_s"]),
        "whole_reply_cpu_s": ratios(fast["whole_reply_cpu_all_s"], int8["whole_reply_cpu_all_s"]),
        "throughput_4": ratios([r["throughput"] for r in throughput["fast"]["runs"]],
                               [r["throughput"] for r in throughput["int8"]["runs"]]),
    }


def verdict(name: str, value: float) -> dict:
    op, limit = TARGETS[name]
    return {"value": value, "target": f"{op} {limit}", "pass": value <= limit if op == "<=" else value >= limit}


def print_report(report: dict) -> None:
    g = report["graphs"]
    rows = [
        ("first segment (s)", "first_segment_s", "{:.3f}"),
        ("whole reply (s)", "whole_reply_s", "{:.3f}"),
        ("throughput x1, 1 session (audio s/wall s)", "throughput_1", "{:.2f}"),
        (f"throughput x{SESSIONS}, {SESSIONS} sessions x 1 thread", "throughput_4", "{:.2f}"),
        ("CPU s per audio s, x1", "cpu_per_audio_s_1", "{:.2f}"),
        (f"CPU s per audio s, x{SESSIONS}", "cpu_per_audio_s_4", "{:.2f}"),
        ("session RSS after a reply (MB)", "session_rss_after_reply_mb", "{:.0f}"),
        ("session load (s, subprocess)", "load_s", "{:.2f}"),
        ("service RSS after a reply (MB)", "rss_after_reply_mb", "{:.0f}"),
        ("service start to ready (s)", "ready_s", "{:.2f}"),
    ]
    m = report["machine"]
    print(f"\nONNX graphs, int8 vs fast ({m['cpu_count']} CPUs {m['cpu']}, onnxruntime {m['onnxruntime']}; "
          f"1-min load average {m['loadavg_at_start'][0]:.1f} at start, {m['loadavg_at_end'][0]:.1f} at end; "
          f"{report['rounds']} rounds)")
    print(f"{'':44s}{'int8':>10s}{'fast':>10s}{'fast/int8':>11s}  target")
    for label, key, fmt in rows:
        i8, fast = g["int8"][key], g["fast"][key]
        target = report["verdicts"].get(key)
        ratio = f"{fast - i8:+.2f} s" if key == "ready_s" else f"{fast / i8:.2f}"
        mark = f"  {target['target']}{' s more' if key == 'ready_s' else ''}  {'PASS' if target['pass'] else 'FAIL'}" \
            if target else ""
        print(f"{label:44s}{fmt.format(i8):>10s}{fmt.format(fast):>10s}{ratio:>11s}{mark}")
    print("\nfast/int8 per round (spread = noise):")
    for name, values in report["per_round_ratios"].items():
        print(f"  {name:18s} " + " ".join(f"{v:.2f}" for v in values)
              + f"   (min {min(values):.2f}, max {max(values):.2f})")


def run(args) -> int:
    rounds, jobs, startup_rounds = (2, 1, 1) if args.quick else (args.rounds, 2, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    began = time.perf_counter()
    log("building or checking the cached fast graph")
    fast_model_path()
    try:
        g2p = G2PRegistry()
        bare = {g: BareEngine(args.voices_dir, onnx_graph=g, g2p=g2p) for g in GRAPHS}
        phonemes = bare["int8"].phonemize(REPLY)
        sessions = measure_sessions(phonemes, args.voices_dir)
        startup = measure_startup(args.voices_dir, args.out, startup_rounds)
        log("warming up both graphs")
        for graph in GRAPHS:
            bare[graph].speak(REPLY)
        log("first segment and whole reply, alternating")
        latency = measure_latency(bare, rounds)
        throughput = measure_throughput_4(phonemes, bare["int8"].pack, max(2, rounds // 2), jobs)
    except BenchmarkError as exc:
        print(f"\n*** BENCHMARK FAILED ***\n{exc}", file=sys.stderr)
        return 1
    graphs = {g: {**sessions[g], **startup[g], **latency[g], **throughput[g]} for g in GRAPHS}
    fast, int8 = graphs["fast"], graphs["int8"]
    ratios = {"first_segment_s": fast["first_segment_s"] / int8["first_segment_s"],
              "whole_reply_s": fast["whole_reply_s"] / int8["whole_reply_s"],
              "throughput_1": fast["throughput_1"] / int8["throughput_1"],
              "throughput_4": fast["throughput_4"] / int8["throughput_4"],
              "session_rss_after_reply_mb": fast["session_rss_after_reply_mb"] - int8["session_rss_after_reply_mb"],
              "ready_s": fast["ready_s"] - int8["ready_s"]}
    machine["loadavg_at_end"] = os.getloadavg()
    report = {"reply": REPLY, "first_segment": split_text(REPLY)[0], "voice": VOICE, "rounds": rounds,
              "quick": args.quick, "machine": machine, "graphs": graphs, "ratios": ratios,
              "per_round_ratios": per_round_ratios(latency, throughput),
              "verdicts": {name: verdict(name, ratios[name]) for name in TARGETS},
              "benchmark_wall_s": time.perf_counter() - began}
    print_report(report)
    (args.out / "graphs.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out / 'graphs.json'} in {report['benchmark_wall_s']:.0f} s")
    return 0


def main() -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "graphs.json")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of the latency figures (default 6)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, fewer jobs: a smoke check")
    parser.add_argument("--session-worker", choices=GRAPHS, help=argparse.SUPPRESS)
    parser.add_argument("--phonemes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.session_worker:
        session_worker(args.session_worker, args.phonemes, str(args.voices_dir))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
