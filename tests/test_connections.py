"""LLaMA leaves one idle connection per call ever made: ten thousand of them cost little, and running
out of file descriptors is survived (the real service process, started as the launcher starts it)."""
from __future__ import annotations

import re
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, VOICES_DIR
from peers import LlamaClient, checked_audio, free_port, reply_frames

pytestmark = pytest.mark.slow  # ./run-tests.sh --quick leaves these out

IDLE_CONNECTIONS = 10_000
START_TIMEOUT_S = 120.0


class ServiceProcess:
    """kokoro_service.py in a subprocess with the open-file limits given, its log in a file."""

    def __init__(self, tmp: Path, nofile: tuple[int, int]):
        self.log_path = tmp / "service.log"
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "kokoro_service.py"), "--engine", "onnx", "--device", "cpu",
             "-t", str(self.port), "-u", str(free_port()), "--http-port", "0", "--voices-dir", str(VOICES_DIR),
             "--cache-mb", "0"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log_path.open("w"),
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile))
        deadline = time.monotonic() + START_TIMEOUT_S
        while "ready in" not in self.log:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log[-3000:]
            time.sleep(0.1)

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, field: str) -> int:
        """A /proc/<pid>/status figure in kB (VmRSS) or a count (Threads)."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1))

    def cpu_s(self) -> float:
        utime, stime = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]
        return (int(utime) + int(stime)) / 100.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def reply_cpu_s(service: "ServiceProcess", call_id: str, text: str) -> float:
    """The service's CPU seconds for one whole reply: what idle connections would add to, whoever else
    shares the machine (a wall-clock time would measure the neighbours too)."""
    before = service.cpu_s()
    checked_audio(reply_frames(service.address, call_id, text))
    return service.cpu_s() - before


def hello_only(address, call_id: str) -> socket.socket:
    sock = socket.create_connection(address)
    raw = call_id.encode()
    sock.sendall(struct.pack(">I", len(raw)))
    sock.sendall(raw)
    return sock


def test_ten_thousand_idle_llama_connections_cost_little(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= IDLE_CONNECTIONS + 2000, f"this machine allows only {hard} open files"
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the test's own end of the connections
    service = ServiceProcess(tmp_path, (1024, hard))
    idle: list[socket.socket] = []
    try:
        assert f"open-file limit raised from 1024 to {hard}" in service.log
        alone = [reply_cpu_s(service, f"alone-{n}", "Thanks for waiting, I am here.") for n in range(2)]
        rss_before = service.status("VmRSS")
        for n in range(IDLE_CONNECTIONS):
            idle.append(hello_only(service.address, f"idle-{n}"))
        deadline = time.monotonic() + 120
        while (held := len(re.findall(r"call idle-\d+: LLaMA connected", service.log))) < IDLE_CONNECTIONS:
            assert time.monotonic() < deadline, f"{held} connections held"
            time.sleep(0.2)
        time.sleep(2.0)
        cpu_before = service.cpu_s()
        time.sleep(5.0)
        idle_cpu = service.cpu_s() - cpu_before
        rss_after = service.status("VmRSS")
        beside = [reply_cpu_s(service, f"beside-{n}", "Thanks for waiting, I am here.") for n in range(2)]
        per_connection_kib = (rss_after - rss_before) / IDLE_CONNECTIONS
        print(f"\n{IDLE_CONNECTIONS} idle connections: RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB "
              f"({per_connection_kib:.1f} KiB each); CPU while idle {idle_cpu:.3f} s in 5 s; CPU per reply "
              f"{min(alone):.3f} s alone, {min(beside):.3f} s beside them ({min(beside) / min(alone):.2f}x)")
        assert idle_cpu < 0.25, f"{idle_cpu:.2f} CPU seconds in 5 s with nothing to do"
        assert min(beside) <= 1.5 * min(alone) + 0.05  # 0.05 s: the clock's 10 ms ticks, twice over
        assert per_connection_kib < 100
        assert "Traceback" not in service.log
    finally:
        for sock in idle:
            sock.close()
        service.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_out_of_file_descriptors_the_service_waits_without_spinning_and_recovers(tmp_path):
    service = ServiceProcess(tmp_path, (256, 256))
    flood: list[socket.socket] = []
    try:
        with LlamaClient(service.address, "before-the-flood") as existing:
            for n in range(400):
                flood.append(hello_only(service.address, f"flood-{n}"))
            deadline = time.monotonic() + 30
            while "cannot accept LLaMA connections" not in service.log:
                assert time.monotonic() < deadline, service.log[-3000:]
                time.sleep(0.1)
            cpu_before = service.cpu_s()
            time.sleep(3.0)
            spent = service.cpu_s() - cpu_before
            existing.text("The call in progress is still served.")
            assert existing.read_frame().samples.size > 0
            errors = service.log.count("cannot accept LLaMA connections")
            print(f"\nout of descriptors: {spent:.3f} CPU s in 3 s, {errors} error line(s)")
            assert spent < 0.5, f"{spent:.2f} CPU seconds in 3 s while out of descriptors"
            assert errors <= 2
        for sock in flood[:300]:
            sock.close()
        checked_audio(reply_frames(service.address, "after-the-flood", "Back to normal."))
    finally:
        for sock in flood:
            sock.close()
        service.stop()
