#!/usr/bin/env python3
"""Intelligibility of the service's speech, scored by the offline Whisper judge.

Speaks every line of ../shared/speech-judge/phrases.txt through a running service over
real sockets (one call per line, frames joined as the caller would hear them), and,
with ``--bare``, through the bare engine (espeak phonemes, no text normalization, the
whole line in one inference) for comparison. Prints per-line and overall word error rate.
``--onnx-graph int8 --onnx-graph fast`` scores both ONNX graphs in one run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from benchmark import run_call

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
JUDGE = SHARED / "speech-judge" / "judge.sh"

from kokoro_daemon.calls import Routing  # noqa: E402
from kokoro_daemon.engines import DEFAULT_ONNX_GRAPH, ONNX_GRAPHS, create_engine  # noqa: E402
from kokoro_daemon.server import KokoroService, ServiceConfig  # noqa: E402
from kokoro_daemon.voices import VoiceLibrary  # noqa: E402


def phrases() -> list[str]:
    lines = (SHARED / "speech-judge" / "phrases.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    soundfile.write(path, np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16")
    return path


def score(folder: Path, items: list[tuple[Path, str]]) -> dict:
    manifest = folder / "manifest.tsv"
    manifest.write_text("".join(f"{wav}\t{text}\n" for wav, text in items))
    result = folder / "judge.json"
    subprocess.run(["bash", str(JUDGE), "score", str(manifest), "--json", str(result)], check=True,
                   capture_output=True, text=True)
    return json.loads(result.read_text())


def bare_engine_items(engine, voices: VoiceLibrary, voice: str, lines: list[str], folder: Path):
    from misaki.espeak import EspeakG2P
    pack = voices.load(voice).pack
    g2p = EspeakG2P(language="en-gb" if voice.startswith("b") else "en-us")
    return [(write_wav(folder / f"bare-{voice}-{n:02d}.wav", engine.synthesize(g2p(text)[0], pack), 24000), text)
            for n, text in enumerate(lines)]


def service_items(service: KokoroService, voice: str, lines: list[str], folder: Path):
    service.set_voice(voice)
    items = []
    for n, text in enumerate(lines):
        reply = run_call(service.tcp_address, str(7000 + n), text, keep_audio=True)
        if reply.error or not reply.frames:
            raise RuntimeError(f"no reply for {text!r}: {reply.error}")
        audio, rate = np.concatenate(reply.audio), reply.frames[0][1]
        items.append((write_wav(folder / f"service-{voice}-{n:02d}.wav", audio, rate), text))
    return items


def print_summary(results: dict, voices: list[str], graphs: list[str]) -> None:
    """WER per voice and graph; a graph's overall is the mean over voices (every voice speaks the same lines)."""
    for kind in dict.fromkeys(name.split(":")[0] for name in results):
        print(f"\n{kind + ' WER':14s}" + "".join(f"{voice:>10s}" for voice in voices) + f"{'overall':>10s}")
        for graph in graphs:
            wers = [results[f"{kind}:{voice}:{graph}"]["overall_wer"] for voice in voices]
            print(f"  {graph:12s}" + "".join(f"{w:10.3f}" for w in wers) + f"{sum(wers) / len(wers):10.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voice", action="append", help="voice(s) to score (default af_sky)")
    parser.add_argument("--voices-dir", default=str(SHARED / "voices" / "v1_0"))
    parser.add_argument("--bare", action="store_true", help="also score the bare engine")
    parser.add_argument("--output-rate", type=int, default=24000, choices=(8000, 16000, 24000))
    parser.add_argument("--lines", type=int, help="only the first N lines")
    parser.add_argument("--onnx-graph", action="append", choices=ONNX_GRAPHS,
                        help=f"ONNX graph to speak with; repeat to score several (default {DEFAULT_ONNX_GRAPH})")
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args()
    voices = args.voice or ["af_sky"]
    graphs = args.onnx_graph or [DEFAULT_ONNX_GRAPH]
    lines = phrases()[: args.lines]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for graph in graphs:
            engine = create_engine("onnx", onnx_graph=graph)
            config = ServiceConfig(voice=voices[0], tcp_port=0, udp_port=0, device="cpu", voices_dir=args.voices_dir,
                                   routing=Routing(output_rate=args.output_rate))
            service = KokoroService(config, engine=engine)
            service.start()
            folder = Path(tmp) / graph
            folder.mkdir()
            try:
                for voice in voices:
                    runs = {"service": service_items(service, voice, lines, folder)}
                    if args.bare:
                        runs["bare"] = bare_engine_items(engine, service.voices, voice, lines, folder)
                    for kind, items in runs.items():
                        results[f"{kind}:{voice}:{graph}"] = score(folder, items)
            finally:
                service.stop()
    for name, result in results.items():
        print(f"\n== {name} (output {args.output_rate} Hz)")
        for row in result["files"]:
            print(f"{row['wer']:6.3f}  {row['reference']}\n        heard: {row['transcript']}")
        print(f"overall WER {name}: {result['overall_wer']:.3f}")
    print_summary(results, voices, graphs)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
