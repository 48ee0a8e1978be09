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
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REPLY = "Thank you for calling. How can I help you today?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def rss_mib(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


def speak(port: int) -> float:
    """One reply over the real protocol; returns seconds of audio received."""
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        for payload in (b"1", REPLY.encode()):
            sock.sendall(struct.pack(">I", len(payload)) + payload)
        sock.sendall(b"\xff\xff\xff\xff")
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    samples, offset = 0, 0
    while offset + 4 <= len(data) and data[offset:offset + 4] != b"\xff\xff\xff\xff":
        size, rate, _ = struct.unpack(">III", data[offset:offset + 12])
        samples += size // 4
        offset += 12 + size
    return samples / 24000


def measure(engine_args: list[str], voices_dir: str) -> dict:
    port, udp = free_port(), free_port()
    command = [sys.executable, str(ROOT / "kokoro_service.py"), *engine_args, "--device", "cpu",
               "-t", str(port), "-u", str(udp), "--voices-dir", voices_dir]
    started = time.monotonic()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in proc.stderr:
            if "ready in" in line:
                ready_s = time.monotonic() - started
                break
            if "failed to start" in line:
                raise RuntimeError(line.strip())
        else:
            raise RuntimeError(f"service exited with {proc.wait()} before it was ready")
        at_ready = rss_mib(proc.pid)
        audio_s = speak(port)
        after = rss_mib(proc.pid)
        return {"command": " ".join(command[1:]), "ready_s": round(ready_s, 2),
                "rss_ready_mib": round(at_ready["VmRSS"]), "rss_after_reply_mib": round(after["VmRSS"]),
                "peak_rss_mib": round(after["VmHWM"]), "reply_audio_s": round(audio_s, 2)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


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
            results["onnx"] = measure(["--engine", "onnx"], args.voices_dir)
        if args.engine in ("kokoro", "both"):
            weights = args.kokoro_model or str(random_full_size_weights(Path(args.kokoro_config), Path(tmp)))
            results["kokoro"] = measure(["--engine", "kokoro", "--model", weights,
                                         "--model-config", args.kokoro_config], args.voices_dir)
            results["kokoro"]["weights"] = "given" if args.kokoro_model else "random, full size"
    for engine, figures in results.items():
        print(f"{engine:7s} ready in {figures['ready_s']:6.2f} s   RSS at ready {figures['rss_ready_mib']:5d} MiB   "
              f"after a reply {figures['rss_after_reply_mib']:5d} MiB   peak {figures['peak_rss_mib']:5d} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
