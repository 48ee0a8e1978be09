#!/usr/bin/env python3
"""Start-up time to ready and resident memory of the service, per engine.

Starts ``kokoro_service.py`` as a real subprocess for each engine, waits for its ready
line, speaks one reply over a real socket, then reads the process's resident memory.
The kokoro (torch) engine needs Kokoro-82M weights: give ``--kokoro-model`` and
``--kokoro-config``; without them it runs on full-size, randomly initialised weights of
the same architecture (built from the config), which costs the same time and memory but
speaks noise.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmark import ROOT, BenchmarkError, ServiceProcess, run_call

SHARED = ROOT.parent / "shared"
REPLY = "Thank you for calling. How can I help you today?"


def random_full_size_weights(config: Path, folder: Path) -> Path:
    """Kokoro-82M's architecture with random weights, saved as the release's .pth layout."""
    import torch
    from kokoro import KModel
    empty = folder / "empty.pth"
    torch.save({}, empty)
    model = KModel(repo_id="hexgrad/Kokoro-82M", config=str(config), model=str(empty))
    weights = folder / "kokoro-random.pth"
    torch.save({name: getattr(model, name).state_dict()
                for name in ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")}, weights)
    return weights


def measure(engine_args: tuple[str, ...], voices_dir: str, log_path: Path) -> dict:
    """Start to ready, memory then, one reply over the real protocol, memory after it."""
    service = ServiceProcess(Path(voices_dir), log_path, cache_mb=None, engine_args=engine_args)
    try:
        ready = service.wait_ready()
        at_ready = service.memory_mb()
        reply = run_call(service.address, "1", REPLY)
        if reply.error or not reply.frames:
            raise BenchmarkError(f"no reply from the service: {reply.error}")
        after = service.memory_mb()
    finally:
        service.stop()
    return {"engine_args": " ".join(engine_args), "ready_s": round(ready["startup_s"], 2),
            "rss_ready_mib": round(at_ready["rss_mb"]), "rss_after_reply_mib": round(after["rss_mb"]),
            "peak_rss_mib": round(after["peak_rss_mb"]), "reply_audio_s": round(reply.audio_s, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("onnx", "kokoro", "both"), default="both")
    parser.add_argument("--voices-dir", default=str(SHARED / "voices" / "v1_0"))
    parser.add_argument("--kokoro-model", help="Kokoro-82M .pth weights (default: random full-size weights)")
    parser.add_argument("--kokoro-config", default=str(SHARED / "voices" / "kokoro-v1_0-config.json"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.engine in ("onnx", "both"):
            results["onnx"] = measure(("--engine", "onnx"), args.voices_dir, Path(tmp) / "onnx.log")
        if args.engine in ("kokoro", "both"):
            weights = args.kokoro_model or str(random_full_size_weights(Path(args.kokoro_config), Path(tmp)))
            results["kokoro"] = measure(("--engine", "kokoro", "--model", weights, "--model-config", args.kokoro_config),
                                        args.voices_dir, Path(tmp) / "kokoro.log")
            results["kokoro"]["weights"] = "given" if args.kokoro_model else "random, full size"
    for engine, figures in results.items():
        print(f"{engine:7s} ready in {figures['ready_s']:6.2f} s   RSS at ready {figures['rss_ready_mib']:5d} MiB   "
              f"after a reply {figures['rss_after_reply_mib']:5d} MiB   peak {figures['peak_rss_mib']:5d} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
