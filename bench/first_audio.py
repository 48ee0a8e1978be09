#!/usr/bin/env python3
"""First audio against the first sentence's length: windowed (stream) against whole-sentence synthesis.

A caller waits for a reply's first window; with whole-sentence synthesis it waits for the whole first
sentence, so the wait grows with the sentence. This starts the service twice (``--synthesis stream``
and ``--synthesis whole``, cache off) and sends each a reply of one comma-free sentence of about 1 to
8 s of speech, one call at a time, rounds interleaved between the two services, and reads the time
to the first audio frame. In the same run it times the bare engine in this process: the unsplit
graph on the whole sentence (what an engine call cost before windows), the split graph's one-window
call (boundary silence skipped), and every window of the streamed sentence (its total compute).
Figures are ratios within this run. See bench/README.md.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import BenchmarkError, ServiceProcess, bench_arguments, log, machine_info, run_call  # noqa: E402

from kokoro_daemon.engines import create_engine  # noqa: E402
from kokoro_daemon.engines.model_asset import embedded_model_path, session_options  # noqa: E402
from kokoro_daemon.engines.windows import WindowPlan  # noqa: E402
from kokoro_daemon.g2p import G2PRegistry  # noqa: E402
from kokoro_daemon.voices import VoiceLibrary  # noqa: E402

# Comma-free first sentences of about 1 to 8 s of speech in af_sky.
SENTENCES = [
    "Thank you.",
    "Your appointment is booked for Monday.",
    "Is there anything else I can help you with today before I let you go?",
    "I have booked your appointment with doctor Patel for next Tuesday morning in the main building "
    "near the parking garage.",
    "I have booked your appointment with doctor Patel for next Tuesday morning in the main building "
    "right next to the pharmacy and the parking garage entrance.",
]
MODES = ("stream", "whole")
TARGETS = {"stream_longest_over_shortest": ("<=", 1.5), "stream_ttfa_longest_s": ("<=", 0.6),
           "stream_ttfa_over_bare_whole_long": ("<=", 0.35), "stream_compute_over_whole": ("<=", 1.15)}


class Bare:
    """The engine in this process: the unsplit graph, and the split one in windows or whole."""

    def __init__(self, voices_dir: Path, plan: WindowPlan):
        self.engine = create_engine("onnx")
        self.unsplit = ort.InferenceSession(str(embedded_model_path()), session_options())
        voice = VoiceLibrary(voices_dir).load("af_sky")
        self.pack, self.phonemize, self.plan = voice.pack, G2PRegistry().get(voice.lang), plan

    def measure(self, text: str) -> dict:
        phonemes = self.phonemize(text)
        started = time.perf_counter()
        self.unsplit.run(None, self.engine._inputs(phonemes, self.pack, 1.0))  # noqa: SLF001
        unsplit = time.perf_counter() - started
        started = time.perf_counter()
        whole = self.engine.synthesize(phonemes, self.pack)
        split_whole = time.perf_counter() - started
        started = time.perf_counter()
        windows = self.engine.prepare(phonemes, self.pack, 1.0, self.plan)
        steps = []
        for window in windows:
            self.engine.render(window)
            steps.append(time.perf_counter() - started)
        return {"unsplit_s": unsplit, "whole_s": split_whole, "first_window_s": steps[0], "windows_s": steps[-1],
                "windows": len(windows), "audio_s": whole.size / self.engine.sample_rate}


def median_of(rows: list[dict]) -> dict:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def run(args) -> int:
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    services = {mode: ServiceProcess(args.voices_dir, args.out / f"first-audio-{mode}.log", 0,
                                     extra_args=("--synthesis", mode)) for mode in MODES}
    try:
        for mode, service in services.items():
            service.wait_ready()
            if f"{mode} synthesis" not in next(line for line in service.lines if "ready in" in line):
                raise BenchmarkError(f"the {mode} service does not say '{mode} synthesis' in its ready line")
        bare = Bare(args.voices_dir, WindowPlan())
        for text in SENTENCES[:2]:   # first inferences are slow
            bare.measure(text)
            for service in services.values():
                run_call(service.address, "warm-up", text)
        ttfa = {mode: {n: [] for n in range(len(SENTENCES))} for mode in MODES}
        engine_rows = {n: [] for n in range(len(SENTENCES))}
        for round_ in range(args.rounds):
            log(f"round {round_ + 1} of {args.rounds}")
            for n, text in enumerate(SENTENCES):
                order = MODES if (round_ + n) % 2 == 0 else MODES[::-1]
                for mode in order:
                    result = run_call(services[mode].address, f"first-audio-{mode}-{round_}-{n}", text)
                    if result.error or result.first_at is None:
                        raise BenchmarkError(f"{mode} call {n}: {result.error or 'no audio'}")
                    ttfa[mode][n].append(result.ttfa_s)
                engine_rows[n].append(bare.measure(text))
    finally:
        for service in services.values():
            service.stop()
    rows = []
    for n in range(len(SENTENCES)):
        row = {"sentence": n, **median_of(engine_rows[n])}
        row.update({f"ttfa_{mode}_s": statistics.median(ttfa[mode][n]) for mode in MODES})
        rows.append(row)
    longest = max(rows, key=lambda r: r["audio_s"])
    shortest = min(rows, key=lambda r: r["audio_s"])
    ratios = {
        "stream_longest_over_shortest": longest["ttfa_stream_s"] / shortest["ttfa_stream_s"],
        "whole_longest_over_shortest": longest["ttfa_whole_s"] / shortest["ttfa_whole_s"],
        "stream_ttfa_longest_s": longest["ttfa_stream_s"],
        "stream_ttfa_over_bare_whole_long": longest["ttfa_stream_s"] / longest["unsplit_s"],
        "stream_compute_over_whole": sum(r["windows_s"] for r in rows) / sum(r["whole_s"] for r in rows),
        "whole_compute_over_unsplit": sum(r["whole_s"] for r in rows) / sum(r["unsplit_s"] for r in rows),
    }
    verdicts = {name: ("PASS" if (ratios[name] <= bound if op == "<=" else ratios[name] >= bound) else "FAIL")
                for name, (op, bound) in TARGETS.items()}
    report = {"machine": machine_info(), "rounds": args.rounds, "sentences": SENTENCES, "rows": rows,
              "ratios": ratios, "targets": {k: list(v) for k, v in TARGETS.items()}, "verdicts": verdicts,
              "benchmark_wall_s": time.perf_counter() - started}
    print_report(report)
    path = args.out / "first_audio.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path} in {report['benchmark_wall_s']:.0f} s")
    return 0


def print_report(report: dict) -> None:
    print("\nfirst sentence | audio s | bare unsplit s | bare whole s | bare 1st window s | windows "
          "| first audio stream s | first audio whole s | stream / bare unsplit")
    for row in report["rows"]:
        print(f"{row['sentence']:>14} | {row['audio_s']:7.2f} | {row['unsplit_s']:14.3f} | {row['whole_s']:12.3f} | "
              f"{row['first_window_s']:17.3f} | {row['windows']:7.0f} | {row['ttfa_stream_s']:20.3f} | "
              f"{row['ttfa_whole_s']:19.3f} | {row['ttfa_stream_s'] / row['unsplit_s']:21.2f}")
    print()
    for name, value in report["ratios"].items():
        target = report["targets"].get(name)
        verdict = f"  target {target[0]} {target[1]}: {report['verdicts'][name]}" if target else ""
        print(f"{name:34} {value:8.3f}{verdict}")


def main() -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "first_audio.json")
    parser.add_argument("--rounds", type=int, default=5, help="calls per sentence and mode (default 5)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
