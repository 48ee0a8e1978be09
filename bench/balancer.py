"""Service instances behind HAProxy as deploy/ lays them out, on free ports of this host.

The shipped deploy/haproxy.cfg is what runs: only its ports are moved to free ones, with a server
line per instance written as the shipped ones are (and its log goes to stderr, with a stats socket
to read the servers' states), so the test and the benchmark exercise the operator's configuration,
not a copy of it.
"""
from __future__ import annotations

import csv
import io
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from benchmark import ROOT, BenchmarkError, ServiceProcess, free_port, stop_process

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
UP_TIMEOUT_S = 30.0
# The shipped frontends, and the LLaMA and HTTP port of each shipped server, in order.
FRONTENDS = {"llama": 8090, "http": 8091}
BACKENDS = ("kokoro_llama", "kokoro_http")
SERVER = re.compile(r"^\s*server (\S+) 127\.0\.0\.1:(\d+) check port (\d+)\s*$", re.M)


def shipped_servers(text: str) -> list[tuple[str, int, int]]:
    """(name, LLaMA port, HTTP port) of each instance in the shipped configuration."""
    return [(name, int(tcp), int(http)) for name, tcp, http in SERVER.findall(text)]


def render(text: str, llama_port: int, http_port: int, instances: list[tuple[int, int]], stats: Path) -> str:
    """The shipped configuration with its ports moved: the frontends to ``llama_port``/``http_port``, and in
    each backend one server per instance (LLaMA, HTTP ports), written as the shipped ones are: ``tts1``,
    ``tts2``... as an operator adds a line per instance."""
    servers = shipped_servers(text)
    shipped = {tcp: 0 for _, tcp, _ in servers} | {http: 1 for _, _, http in servers}   # port -> which of the two
    frontends = {FRONTENDS["llama"]: llama_port, FRONTENDS["http"]: http_port}
    lines: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["server"]:
            if words[1] == "tts1":      # the first server of a backend stands for all of them
                for n, ports in enumerate(instances, 1):
                    lines.append(re.sub(r"(127\.0\.0\.1:|port )(\d+)", lambda m: m[1] + str(ports[shipped[int(m[2])]]),
                                        line.replace("tts1", f"tts{n}")))
            continue
        if words[:1] == ["log"] and words[1:2] == ["/dev/log"]:
            line = "    log stderr format short local0 notice"
        lines.append(re.sub(r"(127\.0\.0\.1:)(\d+)", lambda m: m[1] + str(frontends.get(int(m[2]), m[2])), line))
        if words == ["global"]:
            lines.append(f"    stats socket {stats} level admin")
    return "\n".join(lines) + "\n"


class Balancer:
    """HAProxy (Debian's) on the shipped configuration, in front of ``instances`` (LLaMA, HTTP ports)."""

    def __init__(self, instances: list[tuple[int, int]], workdir: Path):
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise BenchmarkError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.llama_port, self.http_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
        self.stats = (workdir / "haproxy.sock").resolve()   # a path HAProxy reads as a UNIX socket
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(render(HAPROXY_CFG.read_text(), self.llama_port, self.http_port, instances,
                                      self.stats))
        self.log_path = workdir / "haproxy.log"
        self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.log_path.open("w"))

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.llama_port

    def states(self, backend: str) -> dict[str, str]:
        """Each server's state as HAProxy's health checks see it: UP, DOWN, ..."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats))
            sock.sendall(b"show stat\n")
            raw = b"".join(iter(lambda: sock.recv(65536), b""))
        rows = csv.DictReader(io.StringIO(raw.decode().lstrip("# ")))
        return {row["svname"]: row["status"].split()[0] for row in rows
                if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_states(self, wanted: dict[str, str], timeout: float = UP_TIMEOUT_S) -> None:
        """Until the named servers are in the states wanted in both backends (as the health checks see them)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchmarkError(f"haproxy exited with {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                seen = {backend: self.states(backend) for backend in BACKENDS}
            except OSError:     # the stats socket is not there yet
                seen = {}
            if seen and all(seen[b].get(name) == state for b in BACKENDS for name, state in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise BenchmarkError(f"HAProxy's servers are not {wanted} after {timeout:.0f} s: {seen}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, 10)


class Deployment:
    """``len(cpus)`` service instances (each pinned to its cores, or not for None) behind the balancer."""

    def __init__(self, voices_dir: Path, workdir: Path, cpus: list[set[int] | None], extra_args=(),
                 cache_mb: float | None = None, on_line=None):
        self.voices_dir, self.workdir, self.cpus = voices_dir, workdir, cpus
        self.extra_args, self.cache_mb, self.on_line = tuple(extra_args), cache_mb, on_line
        self.ports = [(free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)) for _ in cpus]
        self.names = [f"tts{n}" for n in range(1, len(cpus) + 1)]
        self.instances: list[ServiceProcess] = []
        self.balancer: Balancer | None = None
        self.starts = 0
        try:
            self.instances = [self._start(i) for i in range(len(cpus))]
            self.balancer = Balancer(self.ports, workdir)
        except BaseException:
            self.stop()
            raise

    def _start(self, index: int) -> ServiceProcess:
        self.starts += 1
        return ServiceProcess(self.voices_dir, self.workdir / f"{self.names[index]}-{self.starts}.log",
                              self.cache_mb, extra_args=self.extra_args, on_line=self.on_line,
                              ports=self.ports[index], cpus=self.cpus[index])

    @property
    def address(self) -> tuple[str, int]:
        return self.balancer.address

    def wait_ready(self) -> dict:
        """Every instance ready and every server UP in HAProxy; each instance's start-up figures."""
        startup = [instance.wait_ready() for instance in self.instances]
        self.balancer.wait_states({name: "UP" for name in self.names})
        return {"instances": startup}

    def kill(self, index: int) -> None:
        """The instance dies as a crashed process does: SIGKILL, no goodbye."""
        self.instances[index].proc.kill()
        self.instances[index].proc.wait()

    def restart(self, index: int) -> ServiceProcess:
        """Start the instance again on its own ports (what systemd's Restart=on-failure does)."""
        self.instances[index].stop()
        self.instances[index] = self._start(index)
        return self.instances[index]

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for instance in self.instances:
            instance.stop()
