#!/usr/bin/env python3
"""First-segment policy: how soon the caller hears audio, against how well the reply is understood.

A reply's first segment is spoken as one model call and heard as soon as it is synthesized;
the rest follows segment by segment. This measures, on the speech judge's phrases split as the
service splits them under each policy (`SentenceSegmenter(first_words=...)`): the bare engine's
time for the first segment (phonemize + synthesize, `BareEngine.speak`), interleaved across
policies over several rounds; the judge's word error rate of every phrase spoken segment by
segment as the service speaks it, per voice; and the silence a caller would hear between
segments when they are synthesized back to back. See bench/README.md.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmark import VOICE, BareEngine, bench_arguments, log, machine_info
from intelligibility import phrases, score, write_wav
from kokoro_daemon.g2p import G2PRegistry  # the repository is on sys.path: benchmark put it there
from kokoro_daemon.segmenter import split_text
from kokoro_daemon.synthesis import AudioCache, Synthesizer
from kokoro_daemon.voices import VoiceLibrary

POLICIES = {"clause": None, "words:2": 2, "words:4": 4, "words:6": 6}  # name -> first_words
BASELINE = "clause"
VOICES = ("af_sky", "am_adam", "bf_emma")
# Multi-sentence replies: these phrases (0-based lines of phrases.txt) joined, so later segments follow the first.
REPLY_PHRASES = ((2, 18), (7, 4), (13, 10))
WER_TOLERANCE = 0.005
AUDIBLE_GAP_S = 0.1
CACHE_BYTES = 512 * 1024 * 1024  # every distinct segment once per voice: the policies share most of them


def split(text: str, policy: str) -> list[str]:
    return split_text(text, first_words=POLICIES[policy])


def texts(quick: bool) -> dict[str, list[str]]:
    lines = phrases()
    replies = [" ".join(lines[i] for i in pair) for pair in REPLY_PHRASES]
    return {"phrase": lines[:5] if quick else lines, "reply": replies[:1] if quick else replies}


# -- time --------------------------------------------------------------------------------

def time_segments(bare: BareEngine, segments: set[str], rounds: int, seed: int) -> dict[str, list[dict]]:
    """Every segment once a round, in a new random order each round, so every policy meets the same load."""
    runs: dict[str, list[dict]] = {text: [] for text in segments}
    order = sorted(segments)
    rng = random.Random(seed)
    for n in range(rounds):
        rng.shuffle(order)
        log(f"timing round {n + 1} of {rounds}: {len(order)} segments")
        for text in order:
            runs[text].append(bare.speak(text))
    return runs


def playout_gaps(segments: list[str], synth_s: dict[str, float], audio_s: dict[str, float]) -> list[float]:
    """Silences between segments when each is synthesized right after the one before and played when ready."""
    ready, playing_until, gaps = 0.0, None, []
    for text in segments:
        ready += synth_s[text]
        if playing_until is not None:
            gaps.append(max(0.0, ready - playing_until))
        playing_until = max(ready, playing_until or 0.0) + audio_s[text]
    return gaps


def timing_summary(items: dict[str, list[str]], runs: dict[str, list[dict]]) -> dict:
    """Per policy: first-segment time over the phrases (and per round, for the spread), and the playout gaps.

    The gaps come from each segment's fastest time: a machine busy with other work makes every
    policy's later segments late, which is not what a policy does to the caller.
    """
    median = {text: statistics.median(r["wall_s"] for r in rs) for text, rs in runs.items()}
    fastest = {text: min(r["wall_s"] for r in rs) for text, rs in runs.items()}  # the machine at its least busy
    audio = {text: rs[0]["audio_s"] for text, rs in runs.items()}
    rounds = len(next(iter(runs.values())))
    firsts = {policy: [split(text, policy)[0] for text in items["phrase"]] for policy in POLICIES}
    summary = {}
    for policy, first in firsts.items():
        times = [median[t] for t in first]
        base = firsts[BASELINE]
        per_round = [statistics.median(runs[t][n]["wall_s"] for t in first) for n in range(rounds)]
        ratio_per_round = [statistics.median(runs[t][n]["wall_s"] / runs[b][n]["wall_s"] for t, b in zip(first, base))
                           for n in range(rounds)]
        gaps = {kind: [playout_gaps(split(text, policy), fastest, audio) for text in lines]
                for kind, lines in items.items()}
        every_gap = [g for kind in gaps.values() for reply in kind for g in reply]
        summary[policy] = {
            "first_words_p50": statistics.median(len(t.split()) for t in first),
            "first_audio_s_p50": statistics.median(audio[t] for t in first),
            "first_segment_s_p50": statistics.median(times),
            "first_segment_s_p95": float(np.percentile(times, 95)),
            "first_segment_cpu_s_p50": statistics.median(statistics.median(r["cpu_s"] for r in runs[t]) for t in first),
            "ratio_to_clause_p50": statistics.median(median[t] / median[b] for t, b in zip(first, base)),
            "first_segment_s_p50_per_round": per_round,
            "ratio_to_clause_per_round": ratio_per_round,
            "segments_per_phrase": statistics.fmean(len(split(t, policy)) for t in items["phrase"]),
            "texts_with_gap": sum(any(g > AUDIBLE_GAP_S for g in reply) for kind in gaps.values() for reply in kind),
            "gap_total_s": sum(every_gap),
            "gap_longest_s": max(every_gap, default=0.0),
        }
    return summary


def repeat_spread(runs: dict[str, list[dict]]) -> float:
    """Median over the segments of (slowest - fastest) / median of their repeats: how noisy one timing is."""
    return statistics.median((max(w) - min(w)) / statistics.median(w)
                             for w in ([r["wall_s"] for r in rs] for rs in runs.values()))


# -- intelligibility ---------------------------------------------------------------------

def judge_voice(synthesizer: Synthesizer, voice, items: dict[str, list[str]], folder: Path) -> list[dict]:
    """Speak every text segment by segment under every policy, one WAV each, and score them all in one judge call."""
    folder.mkdir()
    rows, wavs = [], []
    for policy in POLICIES:
        for kind, lines in items.items():
            for n, text in enumerate(lines):
                audio = np.concatenate([synthesizer.speak(segment, voice, 1.0)[0] for segment in split(text, policy)])
                wav = write_wav(folder / f"{policy.replace(':', '')}-{kind}{n:02d}.wav", audio,
                                synthesizer.engine.sample_rate)
                rows.append({"policy": policy, "kind": kind, "text": text})
                wavs.append((wav, text))
    result = score(folder, wavs)
    for row, scored in zip(rows, result["files"]):
        row.update(wer=scored["wer"], transcript=scored["transcript"])
    return rows


def word_error_rates(rows: list[dict]) -> dict:
    """Per policy and kind: WER weighted by the reference's words (the same weights for every policy)."""
    rates = {}
    for policy in POLICIES:
        for kind in ("phrase", "reply"):
            mine = [r for r in rows if r["policy"] == policy and r["kind"] == kind]
            words = [len(r["text"].split()) for r in mine]
            rates.setdefault(policy, {})[kind] = sum(r["wer"] * w for r, w in zip(mine, words)) / sum(words)
    return rates


# -- decision ----------------------------------------------------------------------------

def overlaps(a: list[float], b: list[float]) -> bool:
    return min(a) <= max(b) and min(b) <= max(a)


def decide(timing: dict, wer: dict) -> dict:
    """The fastest policy that loses no more than WER_TOLERANCE on the phrases in any voice, and those within noise of it.

    Noise: the spread over rounds of each policy's first-segment time relative to clause's.
    Beside the rule: the policies that leave more texts than clause with a silence between segments.
    """
    loss = {policy: {voice: wer[voice][policy]["phrase"] - wer[voice][BASELINE]["phrase"] for voice in wer}
            for policy in POLICIES}
    eligible = [policy for policy in POLICIES if max(loss[policy].values()) <= WER_TOLERANCE]
    chosen = min(eligible, key=lambda policy: timing[policy]["first_segment_s_p50"])
    within_noise = [policy for policy in eligible if policy != chosen
                    and overlaps(timing[policy]["ratio_to_clause_per_round"], timing[chosen]["ratio_to_clause_per_round"])]
    adds_silence = [policy for policy in POLICIES if timing[policy]["texts_with_gap"] > timing[BASELINE]["texts_with_gap"]]
    return {"rule": f"fastest first segment (median over the phrases) among the policies whose WER on the phrases "
                    f"is at most {WER_TOLERANCE} above {BASELINE}'s in every voice",
            "wer_loss": loss, "eligible": eligible, "chosen": chosen, "within_noise_of_chosen": within_noise,
            "adds_silence": adds_silence}


# -- report ------------------------------------------------------------------------------

def print_report(report: dict) -> None:
    timing, wer, decision, machine = report["timing"], report["wer"], report["decision"], report["machine"]
    print(f"\nFirst-segment policies ({machine['cpu_count']} CPUs, onnxruntime {machine['onnxruntime']}; "
          f"{len(report['texts']['phrase'])} phrases, {report['rounds']} interleaved rounds, voice {report['timing_voice']} "
          f"for time; 1-min load average {machine['loadavg_at_start'][0]:.1f} at start, "
          f"{machine['loadavg_at_end'][0]:.1f} at end; one segment's repeats spread by "
          f"{report['repeat_spread']:.0%} of their median)")
    print(f"{'policy':9s}{'words':>6s}{'audio s':>8s}{'1st seg p50':>12s}{'p95':>7s}{'x clause':>9s}"
          f"{'rounds':>12s}{'CPU s':>7s}{'segs':>6s}{'gaps>0.1':>9s}{'gap s':>7s}{'longest':>8s}")
    for policy, t in timing.items():
        spread = t["ratio_to_clause_per_round"]
        print(f"{policy:9s}{t['first_words_p50']:6.1f}{t['first_audio_s_p50']:8.2f}{t['first_segment_s_p50']:12.3f}"
              f"{t['first_segment_s_p95']:7.3f}{t['ratio_to_clause_p50']:9.2f}{min(spread):6.2f}-{max(spread):4.2f}"
              f"{t['first_segment_cpu_s_p50']:8.3f}{t['segments_per_phrase']:6.2f}"
              f"{t['texts_with_gap']:5d}/{report['texts_timed']:<3d}{t['gap_total_s']:7.2f}{t['gap_longest_s']:8.2f}")
    print("\nWER on the phrases (on the multi-sentence replies), and the difference to clause on the phrases:")
    print(f"{'policy':9s}" + "".join(f"{voice:>26s}" for voice in wer))
    for policy in timing:
        cells = [f"{wer[v][policy]['phrase']:.3f} ({wer[v][policy]['reply']:.3f}) "
                 f"{decision['wer_loss'][policy][v]:+.3f}" for v in wer]
        print(f"{policy:9s}" + "".join(f"{c:>26s}" for c in cells))
    print(f"\ndecision: {decision['rule']}: {decision['chosen']} (eligible: {', '.join(decision['eligible'])}"
          + (f"; within noise of it: {', '.join(decision['within_noise_of_chosen'])}" if decision["within_noise_of_chosen"]
             else "") + ")")
    if decision["adds_silence"]:
        print(f"more texts than {BASELINE} with a silence over {AUDIBLE_GAP_S} s between segments: "
              + ", ".join(decision["adds_silence"]))


def main() -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "first_segment.json")
    parser.add_argument("--rounds", type=int, default=5, help="times each segment is timed, interleaved (default 5)")
    parser.add_argument("--voice", action="append", help=f"voice(s) to judge (default {', '.join(VOICES)})")
    parser.add_argument("--seed", type=int, default=1, help="the order of the segments in each round")
    parser.add_argument("--quick", action="store_true", help="5 phrases, 1 reply, 1 round, af_sky: a smoke check")
    args = parser.parse_args()
    rounds, voices = (1, ["af_sky"]) if args.quick else (args.rounds, args.voice or list(VOICES))
    args.out.mkdir(parents=True, exist_ok=True)
    machine, began = machine_info(), time.perf_counter()
    items = texts(args.quick)
    segments = {segment for lines in items.values() for text in lines for policy in POLICIES
                for segment in split(text, policy)}
    bare = BareEngine(args.voices_dir)
    for text in items["phrase"][:2]:
        bare.speak(text)  # warm-up
    runs = time_segments(bare, segments, rounds, args.seed)
    timing = timing_summary(items, runs)
    synthesizer = Synthesizer([bare.engine], G2PRegistry(), AudioCache(CACHE_BYTES))
    library, judged = VoiceLibrary(args.voices_dir), {}
    with tempfile.TemporaryDirectory() as tmp:
        for voice in voices:
            log(f"speaking and judging {voice}")
            judged[voice] = judge_voice(synthesizer, library.load(voice), items, Path(tmp) / voice)
    wer = {voice: word_error_rates(rows) for voice, rows in judged.items()}
    machine["loadavg_at_end"] = os.getloadavg()
    report = {"policies": POLICIES, "texts": items, "rounds": rounds, "timing_voice": VOICE,
              "texts_timed": sum(len(lines) for lines in items.values()), "machine": machine,
              "timing": timing, "repeat_spread": repeat_spread(runs), "wer": wer, "decision": decide(timing, wer),
              "segments": {text: {"wall_s": [r["wall_s"] for r in rs], "cpu_s": [r["cpu_s"] for r in rs],
                                  "audio_s": rs[0]["audio_s"]} for text, rs in sorted(runs.items())},
              "judged": judged, "benchmark_wall_s": time.perf_counter() - began}
    print_report(report)
    path = args.out / "first_segment.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path} in {report['benchmark_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
