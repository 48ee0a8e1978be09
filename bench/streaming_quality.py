#!/usr/bin/env python3
"""Streaming quality: does windowed synthesis sound as good as whole-segment synthesis, and what does it cost?

The ONNX engine can render a sentence in windows (kokoro_daemon/engines/windows.py): its front end
runs once per model call, its generator once per window with context frames on both sides, and
consecutive windows are crossfaded over 10 ms. Windowed ("streaming") synthesis ships only if a
caller cannot hear it. This renders every line of ../shared/speech-judge/phrases.txt in several
voices as

  baseline   today's whole-segment synthesis: the unsplit ONNX model, one call per model call;
  whole      the split engine with its boundary silence skipped, one window per model call;
  f.. c.. .. the split engine in windows, one rendering per --plan (default: WindowPlan()),
  ...-reply  with --reply, as the service speaks a reply: its first sentence in that plan's windows,
             the sentences after it joined and whole,

each trimmed as the service trims it (synthesis.trim_silence) and written as a 24 kHz float WAV,
and scores them with the offline speech judge: word error rate (score), DNSMOS and PLCMOS
(quality), PESQ and log-mel distance against baseline (compare). The largest sample step, computed
here, shows a click at a window seam. The engine time of every rendering is summed per kind, the
kinds interleaved phrase by phrase, so the price of the windows' context frames shows as the
ratio windowed / whole.

Gates against baseline, in every voice: WER at most +0.005, DNSMOS OVRL and PLCMOS at most 0.05
lower, largest sample step no larger than baseline's largest; and compute windowed / whole at most 1.15.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile

from benchmark import ROOT, log, machine_info
from intelligibility import JUDGE, phrases
from kokoro_daemon.engines import SAMPLE_RATE, create_engine, split_phonemes  # the repository is on sys.path
from kokoro_daemon.engines.model_asset import embedded_model_path, session_options
from kokoro_daemon.engines.windows import WHOLE, WindowPlan
from kokoro_daemon.g2p import G2PRegistry
from kokoro_daemon.segmenter import split_text
from kokoro_daemon.synthesis import trim_silence
from kokoro_daemon.voices import VoiceLibrary

VOICES = ("af_sky", "am_adam", "bf_emma")
BASELINE, WHOLE_KIND, REPLY_SUFFIX = "baseline", "whole", "-reply"
PLAN_KEYS = {"first": "first_frames", "growth": "growth", "max": "max_frames", "context": "context_frames",
             "min_last": "min_last_frames"}
WER_TOLERANCE = 0.005
MOS_TOLERANCE = 0.05
COMPUTE_TARGET = 1.15
COMPARE_JOBS = 2                 # judge.sh compare processes at once (mostly start-up time)
COMPARE_LINE = re.compile(r"PESQ wb (?P<pesq_wb>\S+)\s+nb (?P<pesq_nb>\S+)\s+mel distance (?P<mel_db>\S+) dB\s+"
                          r"worst 0\.5 s loudness difference (?P<loudness_db>\S+) dB\s+"
                          r"largest sample step (?P<judge_step>\S+) \(reference (?P<judge_reference_step>\S+)\)")


# -- window plans --------------------------------------------------------------------------

def parse_plan(text: str) -> WindowPlan:
    """``first=20,context=12,min_last=16,max=160`` (or WindowPlan's own field names) as a WindowPlan."""
    names = {f.name for f in dataclasses.fields(WindowPlan)}
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        name = PLAN_KEYS.get(key.strip(), key.strip())
        if name not in names or not value:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(PLAN_KEYS)}")
        values[name] = float(value) if name == "growth" else int(value)
    return WindowPlan(**values)


def plan_label(plan: WindowPlan) -> str:
    """A short name for a plan, also its folder: f20-c12-l16-m160 (and -g3 when growth is not 2)."""
    label = f"f{plan.first_frames}-c{plan.context_frames}-l{plan.min_last_frames}-m{plan.max_frames}"
    return label + (f"-g{plan.growth:g}" if plan.growth != 2.0 else "")


# -- rendering -----------------------------------------------------------------------------

class Renderer:
    """The split ONNX engine and, for the baseline, the whole embedded model in a session of its own."""

    def __init__(self):
        import onnxruntime as ort
        self.engine = create_engine("onnx", device="cpu")
        if not self.engine.streams:
            raise SystemExit("the ONNX engine could not be cut into front end and generator: nothing to measure")
        self.session = ort.InferenceSession(str(embedded_model_path()), sess_options=session_options(),
                                            providers=["CPUExecutionProvider"])

    def baseline(self, phonemes: str, pack: np.ndarray) -> np.ndarray:
        """The unsplit model, one call per piece the engine would make (tokens between pads, style by length)."""
        vocab, pieces = self.engine.vocab, []
        for piece in split_phonemes("".join(ch for ch in phonemes if ch in vocab)):
            ids = [vocab[ch] for ch in piece]
            inputs = {"tokens": np.array([[0, *ids, 0]], dtype=np.int64),
                      "style": pack[len(ids) - 1].reshape(1, 256).astype(np.float32),
                      "speed": np.array([1.0], dtype=np.float32)}
            pieces.append(np.asarray(self.session.run(None, inputs)[0], dtype=np.float32).reshape(-1))
        return np.concatenate(pieces)

    def windowed(self, phonemes: str, pack: np.ndarray, plan: WindowPlan) -> np.ndarray:
        """prepare + render every window, joined in order: what the service sends for the segment."""
        windows = self.engine.prepare(phonemes, pack, 1.0, plan)
        return np.concatenate([self.engine.render(window) for window in windows])

    def render(self, kind: str, plan: WindowPlan | None, text: str, phonemize,
               pack: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The trimmed audio of one rendering, with the engine's wall and CPU seconds for it."""
        wall, cpu = time.perf_counter(), time.process_time()
        if kind.endswith(REPLY_SUFFIX):
            first, *rest = split_text(text)
            parts = [(first, plan)] + ([(" ".join(rest), WHOLE)] if rest else [])
            audio = np.concatenate([trim_silence(self.windowed(phonemize(part), pack, part_plan), SAMPLE_RATE)
                                    for part, part_plan in parts])
        else:
            phonemes = phonemize(text)
            audio = trim_silence(self.baseline(phonemes, pack) if kind == BASELINE
                                 else self.windowed(phonemes, pack, plan), SAMPLE_RATE)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return audio, wall, cpu


def max_step(audio: np.ndarray) -> tuple[float, float]:
    """The largest |difference| of consecutive samples (a click), and where it is in seconds."""
    if audio.size < 2:
        return 0.0, 0.0
    steps = np.abs(np.diff(audio))
    at = int(np.argmax(steps))
    return float(steps[at]), at / SAMPLE_RATE


def render_all(renderer: Renderer, kinds: dict[str, WindowPlan | None], voices: list[str], lines: list[str],
               library: VoiceLibrary, out: Path) -> list[dict]:
    """Every (kind, voice, phrase) once, the kinds in a rotating order per phrase so that load hits them alike."""
    g2p, records, names = G2PRegistry(), [], list(kinds)
    for folder in names:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for voice_name in voices:
        voice = library.load(voice_name)
        phonemize = g2p.get(voice.lang)
        log(f"rendering {len(lines)} phrases in {voice_name}, {len(names)} ways")
        for n, text in enumerate(lines):
            for kind in names[n % len(names):] + names[:n % len(names)]:
                audio, wall, cpu = renderer.render(kind, kinds[kind], text, phonemize, voice.pack)
                wav = out / kind / f"{voice_name}-{n:02d}.wav"
                step, step_at = max_step(audio)
                soundfile.write(wav, audio, SAMPLE_RATE, subtype="FLOAT")
                records.append({"kind": kind, "voice": voice_name, "line": n, "text": text, "wav": str(wav),
                                "audio_s": audio.size / SAMPLE_RATE, "wall_s": wall, "cpu_s": cpu,
                                "max_step": step, "max_step_at_s": step_at})
    return records


def warm_up(renderer: Renderer, kinds: dict[str, WindowPlan | None], library: VoiceLibrary, voice: str, text: str):
    """One untimed rendering of each kind: onnxruntime's first runs are slow."""
    loaded = library.load(voice)
    phonemize = G2PRegistry().get(loaded.lang)
    for kind, plan in kinds.items():
        renderer.render(kind, plan, text, phonemize, loaded.pack)


# -- the judge -----------------------------------------------------------------------------

def judge(*args: str) -> str:
    """Run judge.sh; its stdout, or an error carrying its stderr."""
    done = subprocess.run(["bash", str(JUDGE), *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"judge.sh {args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def score(records: list[dict], folder: Path) -> float:
    """One `score` call for all of a kind's files: WER and transcript onto each record; the judge's overall WER."""
    manifest, result = folder / "manifest.tsv", folder / "score.json"
    manifest.write_text("".join(f"{r['wav']}\t{r['text']}\n" for r in records), encoding="utf-8")
    judge("score", str(manifest), "--json", str(result))
    scored = json.loads(result.read_text())
    for record, row in zip(records, scored["files"], strict=True):
        assert row["wav"] == record["wav"], (row["wav"], record["wav"])
        record.update(wer=row["wer"], transcript=row["transcript"])
    return scored["overall_wer"]


def quality(records: list[dict]) -> None:
    """One `quality` call for all of a kind's files; its lines are 'sig 3.45<TAB>bak ...<TAB>plcmos 4.70<TAB>path'."""
    rows = {}
    for line in judge("quality", *(r["wav"] for r in records)).splitlines():
        fields = line.split("\t")
        if len(fields) > 1 and not line.startswith("mean:"):
            rows[fields[-1]] = {key: float(value) for key, value in (field.split(" ") for field in fields[:-1])}
    for record in records:
        record.update(rows[record["wav"]])


def compare(record: dict, reference: dict) -> None:
    """One `compare` call: PESQ, log-mel distance and the judge's sample steps of a rendering against baseline's."""
    line = judge("compare", reference["wav"], record["wav"]).strip().splitlines()[-1]
    match = COMPARE_LINE.search(line)
    if not match:
        raise RuntimeError(f"judge.sh compare printed an unexpected line: {line!r}")
    record.update({key: float(value) for key, value in match.groupdict().items()})


def judge_all(records: list[dict], kinds: list[str], out: Path, with_compare: bool) -> dict[str, float]:
    """Score and rate every kind in one call each, then compare each rendering with its baseline."""
    judge_wer = {}
    for kind in kinds:
        mine = [r for r in records if r["kind"] == kind]
        log(f"judging {kind}: score and quality of {len(mine)} files")
        judge_wer[kind] = score(mine, out / kind)
        quality(mine)
    if with_compare:
        baseline = {(r["voice"], r["line"]): r for r in records if r["kind"] == BASELINE}
        others = [r for r in records if r["kind"] != BASELINE]
        log(f"comparing {len(others)} renderings with baseline, {COMPARE_JOBS} at a time")
        with ThreadPoolExecutor(COMPARE_JOBS) as pool:
            list(pool.map(lambda r: compare(r, baseline[r["voice"], r["line"]]), others))
    return judge_wer


# -- summary and gates ---------------------------------------------------------------------

def aggregate(records: list[dict]) -> dict:
    """WER weighted by reference words; judge scores as means; max step as the largest; times summed."""
    words = [len(r["text"].split()) for r in records]
    means = {key: float(np.mean([r[key] for r in records])) if key in records[0] else None
             for key in ("sig", "bak", "ovrl", "p808", "plcmos", "pesq_wb", "pesq_nb", "mel_db")}
    return {"wer": sum(r["wer"] * w for r, w in zip(records, words)) / sum(words), **means,
            "max_step": max(r["max_step"] for r in records),
            **{key: sum(r[key] for r in records) for key in ("wall_s", "cpu_s", "audio_s")}}


def summarize(records: list[dict], kinds: list[str], voices: list[str]) -> dict:
    return {kind: {group: aggregate([r for r in records if r["kind"] == kind and group in (r["voice"], "overall")])
                   for group in [*voices, "overall"]} for kind in kinds}


def gates(summary: dict, voices: list[str], plans: list[str]) -> dict:
    """Each kind against baseline in every voice, and each plan's compute against whole's."""
    base, result = summary[BASELINE], {}
    for kind in summary:
        if kind == BASELINE:
            continue
        per_voice = {}
        for voice in voices:
            mine, ref = summary[kind][voice], base[voice]
            checks = {"wer_delta": mine["wer"] - ref["wer"], "ovrl_drop": ref["ovrl"] - mine["ovrl"],
                      "plcmos_drop": ref["plcmos"] - mine["plcmos"], "max_step": mine["max_step"],
                      "baseline_max_step": ref["max_step"]}
            checks["passed"] = (checks["wer_delta"] <= WER_TOLERANCE and checks["ovrl_drop"] <= MOS_TOLERANCE
                                and checks["plcmos_drop"] <= MOS_TOLERANCE and mine["max_step"] <= ref["max_step"])
            per_voice[voice] = checks
        result[kind] = {"voices": per_voice, "passed": all(v["passed"] for v in per_voice.values())}
        if kind in plans:
            whole = summary[WHOLE_KIND]["overall"]
            ratio = {"wall": summary[kind]["overall"]["wall_s"] / whole["wall_s"],
                     "cpu": summary[kind]["overall"]["cpu_s"] / whole["cpu_s"]}
            result[kind].update(compute_ratio=ratio, compute_passed=ratio["wall"] <= COMPUTE_TARGET)
    return result


def cell(value: float | None, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-".rjust(len(format(0.0, fmt)))


def print_report(report: dict) -> None:
    summary, gate, machine = report["summary"], report["gates"], report["machine"]
    print(f"\nStreaming quality ({len(report['phrases'])} phrases, voices {', '.join(report['voices'])}; "
          f"{machine['cpu_count']} CPUs, onnxruntime {machine['onnxruntime']}; 1-min load average "
          f"{machine['loadavg_at_start'][0]:.1f} at start, {machine['loadavg_at_end'][0]:.1f} at end)")
    print(f"{'kind':18s}{'voice':9s}{'WER':>7s}{'OVRL':>6s}{'SIG':>6s}{'PLCMOS':>7s}{'PESQ wb':>8s}"
          f"{'max step':>9s}{'compute s':>10s}{'CPU s':>8s}{'audio s':>8s}")
    for kind, groups in summary.items():
        for group, s in groups.items():
            print(f"{kind:18s}{group:9s}{s['wer']:7.3f}{s['ovrl']:6.2f}{s['sig']:6.2f}{s['plcmos']:7.2f}"
                  f"{cell(s['pesq_wb'], '8.2f')}{s['max_step']:9.3f}{s['wall_s']:10.2f}{s['cpu_s']:8.2f}"
                  f"{s['audio_s']:8.1f}")
    print(f"\nGates against {BASELINE} (every voice): WER at most +{WER_TOLERANCE}, OVRL and PLCMOS at most "
          f"{MOS_TOLERANCE} lower, max step no larger than {BASELINE}'s; compute windowed/{WHOLE_KIND} at most "
          f"{COMPUTE_TARGET}")
    print(f"{'kind':18s}{'voice':9s}{'WER +':>8s}{'OVRL -':>8s}{'PLCMOS -':>9s}{'max step':>9s}{'base step':>10s}")
    for kind, g in gate.items():
        for voice, v in g["voices"].items():
            print(f"{kind:18s}{voice:9s}{v['wer_delta']:+8.3f}{v['ovrl_drop']:+8.2f}{v['plcmos_drop']:+9.2f}"
                  f"{v['max_step']:9.3f}{v['baseline_max_step']:10.3f}{'pass' if v['passed'] else 'FAIL':>6s}")
        verdict = f"{kind}: quality {'PASS' if g['passed'] else 'FAIL'}"
        if "compute_ratio" in g:
            ratio = g["compute_ratio"]
            verdict += (f"; compute {ratio['wall']:.2f}x {WHOLE_KIND} (CPU {ratio['cpu']:.2f}x) "
                        f"{'PASS' if g['compute_passed'] else 'FAIL'}")
        print(verdict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voice", action="append", help=f"voice(s) to render (default {', '.join(VOICES)})")
    parser.add_argument("--plan", action="append", type=parse_plan, metavar="first=20,context=12,...",
                        help="a window plan (keys: first, growth, max, context, min_last); repeat for several "
                             "(default WindowPlan())")
    parser.add_argument("--voices-dir", type=lambda text: Path(text).resolve(),
                        default=(ROOT.parent / "shared" / "voices" / "v1_0").resolve(),
                        help="folder holding the voice packs (default ../shared/voices/v1_0)")
    parser.add_argument("--out", type=lambda text: Path(text).resolve(),
                        default=ROOT / "bench" / "results" / "streaming_quality",
                        help="where the WAVs and the judge's files go (default bench/results/streaming_quality)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "streaming_quality.json",
                        help="where the report goes (default bench/results/streaming_quality.json)")
    parser.add_argument("--lines", type=int, help="only the first N phrases")
    parser.add_argument("--reply", action="store_true",
                        help="also render each plan as the service speaks a reply (first sentence windowed)")
    parser.add_argument("--no-compare", action="store_true", help="skip the judge's per-file compare with baseline")
    args = parser.parse_args()
    voices = args.voice or list(VOICES)
    plans = {plan_label(plan): plan for plan in args.plan or [WindowPlan()]}
    if args.reply:
        plans.update({label + REPLY_SUFFIX: plan for label, plan in list(plans.items())})
    kinds = {BASELINE: None, WHOLE_KIND: WHOLE, **plans}
    lines = phrases()[: args.lines]
    machine, began = machine_info(), time.perf_counter()
    renderer, library = Renderer(), VoiceLibrary(args.voices_dir)
    warm_up(renderer, kinds, library, voices[0], lines[0])
    records = render_all(renderer, kinds, voices, lines, library, args.out)
    judge_wer = judge_all(records, list(kinds), args.out, not args.no_compare)
    summary = summarize(records, list(kinds), voices)
    machine["loadavg_at_end"] = os.getloadavg()
    report = {"command": sys.argv, "voices": voices, "phrases": lines, "machine": machine,
              "plans": {label: dataclasses.asdict(plan) for label, plan in plans.items()},
              "summary": summary, "judge_overall_wer": judge_wer,
              "gates": gates(summary, voices, list(plans)),
              "renderings": records, "benchmark_wall_s": time.perf_counter() - began}
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json} and the WAVs under {args.out} in {report['benchmark_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
