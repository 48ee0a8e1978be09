#!/usr/bin/env python3
"""Benchmark of the Kokoro service against its own engine, on this machine, in one run.

Measures the real service (a subprocess, spoken to over TCP as the LLaMA clients do) and the
bare ONNX engine (in this process) while the service is idle, and reports ratios between
them, so that the figures stay comparable on a noisy shared machine. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kokoro_daemon.engines import DEFAULT_ONNX_GRAPH, create_engine  # noqa: E402
from kokoro_daemon.g2p import G2PRegistry  # noqa: E402
from kokoro_daemon.scheduler import first_clause  # noqa: E402
from kokoro_daemon.segmenter import split_text  # noqa: E402
from kokoro_daemon.synthesis import trim_silence  # noqa: E402
from kokoro_daemon.voices import VoiceLibrary  # noqa: E402

REPLY = ("Thank you for calling. How can I help you today? I can look up your account, "
         "book an appointment, or transfer you to billing.")
STOCK_PHRASE = "Thank you for calling."
VOICE = "af_sky"
CONCURRENCY = (1, 4, 8)
BYE = 0xFFFFFFFF
READY_TIMEOUT_S = 180.0
CALL_TIMEOUT_S = 400.0
# The scheduler joins a call's continuation segments into one model call (one frame) when it has lead to
# spare, which drops the lead-in/tail silence between them, and cuts one at its first clause when the caller is
# about to run dry: a call's frame count and length vary with timing.
SAMPLE_TOLERANCE = 0.15

TARGETS = {
    "ttfa_1_over_bare_first_segment": ("<=", 1.25),
    "ttfa_1_over_bare_whole_reply": ("<=", 0.4),
    "ttfa_4_p95_over_ttfa_1": ("<=", 4.5),
    "rtf_4_over_bare": (">=", 0.9),
    "rtf_8_over_bare": (">=", 0.9),
    "cache_hit_ttfa_ms": ("<", 20.0),
    "ttfa_kept_connection_over_fresh": ("<=", 1.2),
}


class BenchmarkError(RuntimeError):
    """The benchmark itself broke (the service did not start, or its audio was wrong)."""


def log(message: str) -> None:
    """Progress on stderr, so the table on stdout stays clean."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port(kind: int) -> int:
    """A port the kernel says is free now, for the service to bind."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it lingers past ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the service as a subprocess ------------------------------------------------------

class ServiceProcess:
    """``kokoro_service.py`` on free ports; its stderr is kept (and saved) to see when it is ready.

    ``extra_args`` go on its command line; ``on_line`` sees every log line as it comes. Its HTTP API is
    off unless ``http`` (then on ``http_port``). ``ports`` (LLaMA, HTTP) fixes the ports, as for an
    instance behind a balancer; ``cpus`` pins it to those cores.
    """

    def __init__(self, voices_dir: Path, log_path: Path, cache_mb: float | None,
                 engine_args: tuple[str, ...] = ("--engine", "onnx"), extra_args: tuple[str, ...] = (),
                 on_line: Callable[[str], None] | None = None, http: bool = False,
                 ports: tuple[int, int] | None = None, cpus: set[int] | None = None):
        if ports is not None:
            self.tcp_port, self.http_port = ports
        else:
            self.tcp_port = free_port(socket.SOCK_STREAM)
            self.http_port = free_port(socket.SOCK_STREAM) if http else 0
        command = [sys.executable, str(ROOT / "kokoro_service.py"), *engine_args, "--device", "cpu",
                   "-t", str(self.tcp_port), "-u", str(free_port(socket.SOCK_DGRAM)),
                   "--http-port", str(self.http_port), "--voices-dir", str(voices_dir), *extra_args]
        if cache_mb is not None:
            command += ["--cache-mb", str(cache_mb)]
        self.log_path = log_path
        self.on_line = on_line
        self.lines: list[str] = []
        self.ready_line = threading.Event()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus))
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.tcp_port

    def _read_log(self) -> None:
        """Drain stderr continuously: a full pipe would block the service's logging."""
        with open(self.log_path, "w", encoding="utf-8") as out:
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if self.on_line is not None:
                    self.on_line(self.lines[-1])
                out.write(line)
                out.flush()
                if "ready in" in line:
                    self.ready_line.set()

    def wait_ready(self) -> dict:
        """Seconds from launch until the port accepts AND the 'ready in' line is out, plus the service's own figure."""
        deadline = self.started + READY_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise BenchmarkError(f"service exited with {self.proc.returncode} before it was ready:\n"
                                     + "\n".join(self.lines[-20:]))
            if self.ready_line.is_set() and self._accepts():
                elapsed = time.perf_counter() - self.started
                own = next((re.search(r"ready in ([\d.]+) s", line) for line in self.lines if "ready in" in line))
                return {"startup_s": elapsed, "service_reported_s": float(own.group(1)) if own else None}
            time.sleep(0.05)
        raise BenchmarkError(f"service not ready after {READY_TIMEOUT_S:.0f} s:\n" + "\n".join(self.lines[-20:]))

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(self.address, timeout=1.0):
                return True
        except OSError:
            return False

    def memory_mb(self) -> dict:
        """Resident (VmRSS) and peak resident (VmHWM) memory, from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}

    def cpu_s(self) -> float:
        """User + system CPU seconds the service has used: unlike wall time, barely moved by other load."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self._reader.join(timeout=5)


# -- a LLaMA client ---------------------------------------------------------------------

@dataclass
class CallResult:
    call_id: str
    sent_at: float = 0.0
    first_at: float | None = None
    last_at: float | None = None
    frames: list[tuple[int, int, int]] = field(default_factory=list)   # (chunk_id, rate, samples)
    audio: list[np.ndarray] = field(default_factory=list)              # payloads, when kept
    error: str | None = None

    @property
    def ttfa_s(self) -> float:
        return self.first_at - self.sent_at

    @property
    def total_s(self) -> float:
        return self.last_at - self.sent_at

    @property
    def samples(self) -> int:
        return sum(n for _, _, n in self.frames)

    @property
    def audio_s(self) -> float:
        return sum(n / rate for _, rate, n in self.frames)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes, however TCP splits them; a frame counts only once all of it is here."""
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError(f"service closed after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


def run_call(address, call_id: str, text: str, barrier: threading.Barrier | None = None,
             keep_audio: bool = False) -> CallResult:
    """One call as the LLaMA peer makes it: HELLO, one text chunk, BYE; then read frames to the service's BYE.

    Connecting and HELLO happen before the barrier, so concurrent calls start their text together.
    """
    result = CallResult(call_id)
    try:
        with socket.create_connection(address, timeout=CALL_TIMEOUT_S) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw_id = call_id.encode()
            sock.sendall(struct.pack(">I", len(raw_id)) + raw_id)
            if barrier is not None:
                barrier.wait()
            raw = text.encode("utf-8")
            result.sent_at = time.perf_counter()
            sock.sendall(struct.pack(">I", len(raw)) + raw)
            sock.sendall(struct.pack(">I", BYE))
            while True:
                head = recv_exact(sock, 4)
                size = struct.unpack(">I", head)[0]
                if size == BYE:
                    break
                rate, chunk_id = struct.unpack(">II", recv_exact(sock, 8))
                payload = recv_exact(sock, size)
                if keep_audio:
                    result.audio.append(np.frombuffer(payload, dtype="<f4"))
                result.last_at = time.perf_counter()
                result.first_at = result.first_at or result.last_at
                result.frames.append((chunk_id, rate, size // 4))
    except (OSError, threading.BrokenBarrierError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def concurrent_calls(address, count: int, text: str, first_id: int) -> list[CallResult]:
    """``count`` calls on their own connections with unique ids, text sent at the same instant.

    The ids are not numbers, so the audio comes straight back on each connection: no processor is
    waited for (the conversation benchmark measures calls through processors).
    """
    barrier = threading.Barrier(count, timeout=60)   # a call that cannot connect breaks it, not hangs it
    results: list[CallResult | None] = [None] * count

    def one(i: int) -> None:
        results[i] = run_call(address, f"concurrent-{first_id + i}", text, barrier)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def check_call(result: CallResult, frames: range, reference_samples: int | None) -> list[str]:
    """Why a call's audio is wrong: an error, chunk_ids not 1..n in order, a frame count outside ``frames``
    (joined or cut segments), or an audio length beyond SAMPLE_TOLERANCE of the reference."""
    where = f"call {result.call_id}"
    if result.error:
        return [f"{where}: {result.error}"]
    problems = []
    ids = [chunk_id for chunk_id, _, _ in result.frames]
    if ids != list(range(1, len(ids) + 1)):
        problems.append(f"{where}: chunk_ids {ids}, expected 1..{len(ids)} in order")
    if len(ids) not in frames:
        problems.append(f"{where}: {len(ids)} frames, expected {frames.start}..{frames.stop - 1}")
    if reference_samples is not None and abs(result.samples - reference_samples) > SAMPLE_TOLERANCE * reference_samples:
        problems.append(f"{where}: {result.samples} samples, single-call reference {reference_samples}")
    return problems


def frame_range(reply: str) -> range:
    """How many frames a call of ``reply`` may get: its first segment alone and the rest joined, up to every
    segment alone with each continuation cut at its first clause."""
    segments = split_text(reply)
    cuts = sum(1 for segment in segments[1:] if first_clause(segment))
    return range(min(2, len(segments)), len(segments) + cuts + 1)


def summarize(results: list[CallResult], cpu_s: float) -> dict:
    """Per-level figures: time to first audio percentiles, wall time, audio delivered per wall and CPU second."""
    ttfa = np.array([r.ttfa_s for r in results])
    wall = max(r.last_at for r in results) - min(r.sent_at for r in results)
    audio = sum(r.audio_s for r in results)
    return {"calls": len(results), "ttfa_p50_s": float(np.percentile(ttfa, 50)),
            "ttfa_p95_s": float(np.percentile(ttfa, 95)), "ttfa_all_s": ttfa.tolist(),
            "wall_s": wall, "audio_s": audio, "rtf": audio / wall, "cpu_per_audio_s": cpu_s / audio}


def measure_service(service: ServiceProcess, repeats: int, frames: range) -> tuple[dict, list[str]]:
    """1 call (median of ``repeats``), then 4 and 8 concurrent calls; every call's frames checked."""
    problems: list[str] = []
    cpu_before = service.cpu_s()
    singles = [run_call(service.address, f"single-{i}", REPLY) for i in range(repeats)]
    single_cpu = service.cpu_s() - cpu_before
    spoken = [r.samples for r in singles if not r.error and r.frames]
    reference = statistics.median(spoken) if spoken else None
    for r in singles:
        problems += check_call(r, frames, reference)
    if problems:
        return {}, problems
    levels = {1: {"calls": 1, "runs": repeats,
                  "ttfa_p50_s": statistics.median(r.ttfa_s for r in singles),
                  "ttfa_p95_s": float(np.percentile([r.ttfa_s for r in singles], 95)),
                  "ttfa_all_s": [r.ttfa_s for r in singles],
                  "wall_s": statistics.median(r.total_s for r in singles),
                  "audio_s": singles[0].audio_s,
                  "rtf": statistics.median(r.audio_s / r.total_s for r in singles),
                  "cpu_per_audio_s": single_cpu / sum(r.audio_s for r in singles),
                  "samples_per_call": reference}}
    for count in CONCURRENCY[1:]:
        log(f"service: {count} concurrent calls")
        cpu_before = service.cpu_s()
        results = concurrent_calls(service.address, count, REPLY, first_id=1000 * count)
        for r in results:
            problems += check_call(r, frames, reference)
        if problems:
            return levels, problems
        levels[count] = summarize(results, service.cpu_s() - cpu_before)
    log("service: replies 1-4 on one kept connection")
    levels["kept"] = measure_kept_connection(service, 4)
    return levels, problems


def measure_kept_connection(service: ServiceProcess, replies: int) -> dict:
    """Time to first audio of replies 2..n on one kept connection, as the LLaMA client sends them (each reply
    whole, no BYE): each must start with its own short first segment, as the first reply on a fresh one does.
    A fresh call with the same text goes just before each reply, so that both see the same machine load, and
    each reply is sent once the last one has played in real time, as a caller answers only after hearing it
    (earlier, the service's pacing would rightly hold the new audio back behind the old)."""
    call_id, ttfa, fresh, played_at = "kept-1", [], [], 0.0
    with socket.create_connection(service.address, timeout=CALL_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(struct.pack(">I", len(call_id)) + call_id.encode())
        for reply in range(1, replies + 1):
            fresh.append(run_call(service.address, f"fresh-{reply}", REPLY).ttfa_s)
            time.sleep(max(0.0, played_at - time.perf_counter()))
            raw = REPLY.encode("utf-8")
            sent = time.perf_counter()
            sock.sendall(struct.pack(">I", len(raw)) + raw)
            size, rate, _ = struct.unpack(">III", recv_exact(sock, 12))
            recv_exact(sock, size)
            first_at = time.perf_counter()
            ttfa.append(first_at - sent)
            audio_s = size / 4 / rate
            done = f"call {call_id}: reply {reply} done: "
            while not any(line.split(" kokoro_daemon.calls: ", 1)[-1].startswith(done) for line in service.lines):
                time.sleep(0.02)
            frames = int(next(line for line in service.lines if done in line).split(done, 1)[1].split()[0])
            for _ in range(frames - 1):
                size, rate, _ = struct.unpack(">III", recv_exact(sock, 12))
                recv_exact(sock, size)
                audio_s += size / 4 / rate
            played_at = first_at + audio_s
    return {"ttfa_s": ttfa, "later_replies_p50_s": statistics.median(ttfa[1:]), "fresh_ttfa_s": fresh,
            "fresh_p50_s": statistics.median(fresh[1:])}


def measure_cache(address, hits: int) -> tuple[dict, list[str]]:
    """The stock phrase once (a miss), then again on new connections (hits, served from the cache)."""
    miss = run_call(address, "cache-500", STOCK_PHRASE)
    problems = check_call(miss, frame_range(STOCK_PHRASE), None)
    results = [run_call(address, f"cache-{501 + i}", STOCK_PHRASE) for i in range(hits)]
    for r in results:
        problems += check_call(r, frame_range(STOCK_PHRASE), miss.samples)
    if problems:
        return {}, problems
    ttfa = [r.ttfa_s * 1000 for r in results]
    return {"miss_ttfa_ms": miss.ttfa_s * 1000, "hit_ttfa_ms": statistics.median(ttfa), "hit_ttfa_all_ms": ttfa}, []


# -- the bare engine ------------------------------------------------------------------

class BareEngine:
    """The service's engine, phonemizer and voice, in this process, with no service around them."""

    def __init__(self, voices_dir: Path, threads: int | None = None, onnx_graph: str = DEFAULT_ONNX_GRAPH,
                 g2p: G2PRegistry | None = None):
        self.engine = create_engine("onnx", threads=threads, onnx_graph=onnx_graph)
        voice = VoiceLibrary(voices_dir).load(VOICE)
        self.pack = voice.pack
        self.phonemize = (g2p or G2PRegistry()).get(voice.lang)

    def speak(self, text: str) -> dict:
        """Wall and CPU seconds of phonemize + synthesize (what the service does per segment), and audio seconds.

        Audio is counted after the service's own silence trim, so that an audio second
        means the same here as in the service's frames; the untrimmed length is kept too.
        """
        wall, cpu = time.perf_counter(), time.process_time()
        audio = self.engine.synthesize(self.phonemize(text), self.pack, 1.0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rate = self.engine.sample_rate
        return {"wall_s": wall, "cpu_s": cpu, "audio_s": len(trim_silence(audio, rate)) / rate,
                "untrimmed_audio_s": len(audio) / rate}

    def measure(self, repeats: int) -> dict:
        """Median of ``repeats`` for the service's first segment and for the whole reply as one call."""
        first = [self.speak(split_text(REPLY)[0]) for _ in range(repeats)]
        whole = [self.speak(REPLY) for _ in range(repeats)]
        return {"first_segment_s": statistics.median(r["wall_s"] for r in first),
                "first_segment_audio_s": first[0]["audio_s"],
                "whole_reply_s": statistics.median(r["wall_s"] for r in whole),
                "whole_reply_audio_s": whole[0]["audio_s"],
                "whole_reply_untrimmed_audio_s": whole[0]["untrimmed_audio_s"],
                "rtf": statistics.median(r["audio_s"] / r["wall_s"] for r in whole),
                "cpu_per_audio_s": statistics.median(r["cpu_s"] / r["audio_s"] for r in whole)}


def mean_of_passes(passes: list[dict]) -> dict:
    """The two bare passes bracket the service run; their mean cancels slow drift of the machine's load."""
    return {key: statistics.fmean(p[key] for p in passes) for key in passes[0]}


# -- report ---------------------------------------------------------------------------

def compute_ratios(bare: dict, levels: dict, cache: dict) -> dict:
    ttfa_1 = levels[1]["ttfa_p50_s"]
    return {
        "ttfa_1_over_bare_first_segment": ttfa_1 / bare["first_segment_s"],
        "ttfa_1_over_bare_whole_reply": ttfa_1 / bare["whole_reply_s"],
        "ttfa_4_p95_over_ttfa_1": levels[4]["ttfa_p95_s"] / ttfa_1,
        "rtf_4_over_bare": levels[4]["rtf"] / bare["rtf"],
        "rtf_8_over_bare": levels[8]["rtf"] / bare["rtf"],
        "cache_hit_ttfa_ms": cache["hit_ttfa_ms"],
        "ttfa_kept_connection_over_fresh": levels["kept"]["later_replies_p50_s"] / levels["kept"]["fresh_p50_s"],
    }


def verdicts(ratios: dict) -> dict:
    """PASS/FAIL of each ratio against its target."""
    out = {}
    for name, (op, limit) in TARGETS.items():
        value = ratios[name]
        ok = {"<=": value <= limit, ">=": value >= limit, "<": value < limit}[op]
        out[name] = {"value": value, "target": f"{op} {limit}", "pass": ok}
    return out


def print_report(report: dict) -> None:
    bare, levels, start, cache = report["bare"], report["service"], report["startup"], report["cache"]
    cols = ["bare engine"] + [f"service x{n}" for n in CONCURRENCY]
    rows = [
        ("time to first audio p50 (s)", bare["first_segment_s"], *(levels[n]["ttfa_p50_s"] for n in CONCURRENCY)),
        ("time to first audio p95 (s)", bare["first_segment_s"], *(levels[n]["ttfa_p95_s"] for n in CONCURRENCY)),
        ("total wall time (s)", bare["whole_reply_s"], *(levels[n]["wall_s"] for n in CONCURRENCY)),
        ("audio delivered (s)", bare["whole_reply_audio_s"], *(levels[n]["audio_s"] for n in CONCURRENCY)),
        ("audio s per wall s", bare["rtf"], *(levels[n]["rtf"] for n in CONCURRENCY)),
        ("CPU s per audio s", bare["cpu_per_audio_s"], *(levels[n]["cpu_per_audio_s"] for n in CONCURRENCY)),
    ]
    print(f"\nKokoro service benchmark ({report['machine']['cpu_count']} CPUs, onnxruntime "
          f"{report['machine']['onnxruntime']}, Python {report['machine']['python']}; service cache OFF, "
          f"--cache-mb 0, so every segment is synthesized; 1-min load average "
          f"{report['machine']['loadavg_at_start'][0]:.1f} at start, {report['machine']['loadavg_at_end'][0]:.1f} at end)")
    print(f"{'':30s}" + "".join(f"{c:>14s}" for c in cols))
    for label, *values in rows:
        print(f"{label:30s}" + "".join(f"{v:14.2f}" for v in values))
    print("bare engine: first audio = the service's first segment "
          f"({bare['first_segment_audio_s']:.2f} s of audio), total = the whole reply as one call "
          f"({bare['whole_reply_untrimmed_audio_s']:.2f} s before the service's silence trim); "
          "mean of two passes around the service run")
    passes = report["bare_passes"]
    print("bare passes: first segment " + " / ".join(f"{p['first_segment_s']:.2f}" for p in passes)
          + " s; whole reply " + " / ".join(f"{p['whole_reply_s']:.2f}" for p in passes) + " s")
    print(f"\nstart-up to ready: {start['startup_s']:.1f} s (service's own 'ready in': "
          f"{start['service_reported_s']:.1f} s); RSS after start {report['memory']['after_start']['rss_mb']:.0f} MB, "
          f"after the load test {report['memory']['after_load']['rss_mb']:.0f} MB "
          f"(peak {report['memory']['after_load']['peak_rss_mb']:.0f} MB)")
    kept = levels["kept"]["ttfa_s"]
    print(f"one kept connection, replies 1-{len(kept)}: time to first audio "
          + ", ".join(f"{t:.2f}" for t in kept) + " s; a fresh call just before each: "
          + ", ".join(f"{t:.2f}" for t in levels["kept"]["fresh_ttfa_s"]) + " s")
    print(f"cache (second service, cache on): miss {cache['miss_ttfa_ms']:.0f} ms, "
          f"hit {cache['hit_ttfa_ms']:.1f} ms to first audio (median of {len(cache['hit_ttfa_all_ms'])})")
    print("\ntargets:")
    for name, v in report["verdicts"].items():
        print(f"  {name:34s} {v['value']:8.2f}  {v['target']:>7s}  {'PASS' if v['pass'] else 'FAIL'}")


def machine_info() -> dict:
    import onnxruntime
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu_count": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg()}


def plot_ttfa(report: dict, path: Path) -> None:
    """TTFA p50/p95 against concurrency, with the bare first-segment time as the floor to compare with."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    levels = report["service"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(CONCURRENCY, [levels[n]["ttfa_p50_s"] for n in CONCURRENCY], "o-", label="service p50")
    ax.plot(CONCURRENCY, [levels[n]["ttfa_p95_s"] for n in CONCURRENCY], "s--", label="service p95")
    ax.axhline(report["bare"]["first_segment_s"], color="gray", linestyle=":", label="bare engine, first segment")
    ax.set_xticks(CONCURRENCY)
    ax.set_xlabel("concurrent calls")
    ax.set_ylabel("time to first audio (s)")
    ax.set_title(f"Kokoro service, onnx on {report['machine']['cpu_count']} CPUs, cache off")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------

def run(args) -> int:
    repeats, warmups, hits = (1, 1, 2) if args.quick else (3, 2, 5)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    frames = frame_range(REPLY)
    began = time.perf_counter()
    services: list[ServiceProcess] = []
    try:
        log("starting the service (cache off)")
        service = ServiceProcess(args.voices_dir, args.out / "service.log", cache_mb=0)
        services.append(service)
        startup = service.wait_ready()
        memory = {"after_start": service.memory_mb()}
        log(f"ready in {startup['startup_s']:.1f} s; loading the bare engine here")
        bare = BareEngine(args.voices_dir)
        for _ in range(warmups):
            bare.speak(REPLY)
        log("bare engine, pass 1")
        passes = [bare.measure(repeats)]
        log("service: single calls")
        levels, problems = measure_service(service, repeats, frames)
        if problems:
            raise BenchmarkError("service audio is wrong:\n  " + "\n  ".join(problems))
        memory["after_load"] = service.memory_mb()
        log("bare engine, pass 2")
        passes.append(bare.measure(repeats))
        service.stop()
        log("starting a second service (cache on) for cache hits")
        cached = ServiceProcess(args.voices_dir, args.out / "service-cache.log", cache_mb=None)
        services.append(cached)
        cache_startup = cached.wait_ready()
        cache, problems = measure_cache(cached.address, hits)
        if problems:
            raise BenchmarkError("cache service audio is wrong:\n  " + "\n  ".join(problems))
        cache["startup_s"] = cache_startup["startup_s"]
    except BenchmarkError as exc:
        print(f"\n*** BENCHMARK FAILED ***\n{exc}", file=sys.stderr)
        return 1
    finally:
        for svc in services:
            svc.stop()
    bare_mean = mean_of_passes(passes)
    ratios = compute_ratios(bare_mean, levels, cache)
    machine["loadavg_at_end"] = os.getloadavg()
    report = {"reply": REPLY, "segments": split_text(REPLY), "quick": args.quick, "repeats": repeats,
              "service_cache": "off (--cache-mb 0) for start-up, memory and concurrency; on for the cache figures",
              "machine": machine, "startup": startup, "memory": memory, "bare": bare_mean, "bare_passes": passes,
              "service": levels, "cache": cache, "ratios": ratios, "verdicts": verdicts(ratios),
              "benchmark_wall_s": time.perf_counter() - began}
    print_report(report)
    write_results(report, args.out / "benchmark.json", plot_ttfa, args.out / "ttfa.png")
    return 0


def write_results(report: dict, json_path: Path, plot: Callable[[dict, Path], None], png_path: Path) -> None:
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, png_path)
    print(f"\nwrote {json_path} and {png_path} in {report['benchmark_wall_s']:.0f} s")


def bench_arguments(description: str, outputs: str) -> argparse.ArgumentParser:
    """The options every service benchmark takes: where the voices are, where the results go."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--voices-dir", type=lambda text: Path(text).resolve(),
                        default=(ROOT.parent / "shared" / "voices" / "v1_0").resolve(),
                        help="folder holding af_sky.pt (default ../shared/voices/v1_0)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help=f"where {outputs} and the service logs go (default bench/results)")
    return parser


def main() -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "benchmark.json, ttfa.png")
    parser.add_argument("--quick", action="store_true", help="one repeat of each figure: a smoke check")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
