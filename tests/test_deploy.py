"""Two service instances behind Debian's HAProxy on deploy/haproxy.cfg, as deploy/ lays them out: calls
spread over both and heard whole (a Piper-era processor's too), one instance killed mid-call and started
again, LLaMA restarting.

The peers are the real ones' emulations: one LLaMA client for every call, dial-in processors playing in
real time; the instances are real processes (kokoro_service.py) on the embedded model.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, VOICES_DIR, judge, write_wav
from peers import DialInProcessor, LlamaPeer, PiperProcessor

sys.path.insert(0, str(ROOT / "bench"))

from balancer import Deployment, shipped_servers  # noqa: E402
from conversation import ReplyLog, free_bases  # noqa: E402

WAIT_S = 120.0
CALLS = 7
SHORT = ["Thank you for calling. How can I help you today?",
         "I can help you with that. May I have your account number, please?",
         "Your appointment is booked for Monday at nine.",
         "Is there anything else I can help you with?"]
LONG = ("Our office is open from eight in the morning to six in the evening, Monday through Friday. "
        "The clinic is on the second floor, and parking is free for patients. "
        "Please bring your insurance card and a photo ID to your first visit.")


@pytest.fixture
def deployment(tmp_path):
    tts_base, = free_bases(socket.SOCK_STREAM, CALLS, 1)
    announce_base, = free_bases(socket.SOCK_DGRAM, CALLS, 1)
    replies = ReplyLog()
    deployed = Deployment(VOICES_DIR, tmp_path, cpus=[None, None], cache_mb=0, on_line=replies.feed,
                          extra_args=("--processor-base-port", str(tts_base),
                                      "--announce-base-port", str(announce_base)))
    deployed.replies, deployed.bases = replies, (tts_base, announce_base)
    try:
        deployed.wait_ready()
        yield deployed
    finally:
        deployed.stop()


def holder(deployment, call: int) -> int:
    """Which instance took the call: the one that logged its LLaMA connection."""
    pattern = re.compile(rf"call {call}: LLaMA connected")
    held = [i for i, instance in enumerate(deployment.instances) if any(map(pattern.search, instance.lines))]
    assert len(held) == 1, f"call {call} on instances {held}"
    return held[0]


def heard_whole(deployment, processor: DialInProcessor, reply: int = 1) -> None:
    """The call's ``reply``-th reply was spoken, sent and played, every frame in order."""
    done = [deployment.replies.wait(str(processor.call_id), n, WAIT_S) for n in range(1, reply + 1)]
    assert None not in done, f"call {processor.call_id}: replies done {done}"
    assert processor.wait_played(sum(d.frames for d in done), WAIT_S), processor.errors
    assert [f.chunk_id for f in processor.frames] == list(range(1, len(processor.frames) + 1))
    assert processor.errors == [] and processor.erased_s == 0


@pytest.mark.slow
@pytest.mark.judge
def test_calls_spread_survive_a_dead_instance_and_return_to_it(deployment, tmp_path):
    tts_base, announce_base = deployment.bases
    processors = {n: DialInProcessor(n, tts_base, announce_base) for n in range(1, CALLS)}
    nowhere = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    nowhere.bind(("127.0.0.1", 0))   # a Piper-era REGISTER goes to one instance's port: here, to no instance's
    processors[CALLS] = PiperProcessor(CALLS, service_udp=nowhere.getsockname(), base=tts_base)
    wavs = []
    try:
        with LlamaPeer(deployment.address) as llama:
            # four calls at once: leastconn puts two on each instance
            for n, text in zip(range(1, 5), SHORT):
                llama.reply(n, text)
                time.sleep(0.2)     # each connection counted before the next is placed
            for n, text in zip(range(1, 5), SHORT):
                heard_whole(deployment, processors[n])
                wavs.append((write_wav(tmp_path / f"call{n}.wav", processors[n].played_audio(), 24000), text))
            on = {n: holder(deployment, n) for n in range(1, 5)}
            assert sorted(on.values()) == [0, 0, 1, 1], on

            # a Piper-era processor listens on base+N: the instance that takes the call dials out to it unasked
            llama.reply(CALLS, SHORT[1])
            heard_whole(deployment, processors[CALLS])
            wavs.append((write_wav(tmp_path / "piper.wav", processors[CALLS].played_audio(), 24000), SHORT[1]))

            # an instance dies mid-reply: its call's link closes; the survivor's call is heard whole
            doomed = next(n for n in range(1, 5) if on[n] == 0)
            spared = next(n for n in range(1, 5) if on[n] == 1)
            before = {n: len(processors[n].frames) for n in (doomed, spared)}
            llama.reply(doomed, LONG)
            llama.reply(spared, LONG)
            assert processors[doomed].wait_frames(before[doomed] + 1, WAIT_S), processors[doomed].errors
            deployment.kill(0)
            assert processors[doomed].wait_links(1, WAIT_S, ended=True), "the dead instance's link did not close"
            heard_whole(deployment, processors[spared], reply=2)

            # new calls go to the survivor, at once (a refused connect is tried on the other server)
            llama.reply(5, SHORT[2])
            heard_whole(deployment, processors[5])
            assert holder(deployment, 5) == 1
            wavs.append((write_wav(tmp_path / "call5.wav", processors[5].played_audio(), 24000), SHORT[2]))

            # the instance comes back (systemd restarts it) and takes the next new call
            deployment.restart(0).wait_ready()
            deployment.balancer.wait_states({deployment.names[0]: "UP"})
            llama.reply(6, SHORT[3])
            heard_whole(deployment, processors[6])
            assert holder(deployment, 6) == 0
            wavs.append((write_wav(tmp_path / "call6.wav", processors[6].played_audio(), 24000), SHORT[3]))

        # LLaMA restarts (every connection closes) while calls go on: each call's next reply goes back to the
        # instance that holds it and its processor link. Call 5's new connection puts one on the survivor, so
        # leastconn alone would send `spared` to the restarted instance.
        with LlamaPeer(deployment.address) as llama:
            llama.reply(5, SHORT[0])
            heard_whole(deployment, processors[5], reply=2)
            llama.reply(spared, SHORT[0])
            heard_whole(deployment, processors[spared], reply=3)
            assert len(processors[spared].links) == 1 and len(processors[5].links) == 1
    finally:
        for processor in processors.values():
            processor.kill()
        nowhere.close()
    spared_audio = processors[spared].played_audio()
    wavs.append((write_wav(tmp_path / "spared.wav", spared_audio, 24000), f"{SHORT[spared - 1]} {LONG} {SHORT[0]}"))
    result = judge(tmp_path, wavs)
    print(f"WER {result['overall_wer']:.3f}: " + "; ".join(f["transcript"] for f in result["files"]))
    assert result["overall_wer"] <= 0.05, result


def env_file(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_the_shipped_unit_env_files_and_haproxy_config_agree(tmp_path):
    """Each instance's env file holds the ports HAProxy sends to and checks; instance 1 keeps UDP 13001; the
    unit file is one systemd accepts, run from this checkout."""
    deploy = ROOT / "deploy"
    servers = shipped_servers((deploy / "haproxy.cfg").read_text())
    instances = [env_file(deploy / "kokoro-tts" / f"{n}.env") for n in range(1, len(servers) + 1)]
    assert [(int(i["KOKORO_TCP_PORT"]), int(i["KOKORO_HTTP_PORT"])) for i in instances] == \
        [(tcp, http) for _, tcp, http in servers]
    assert instances[0]["KOKORO_UDP_PORT"] == "13001"
    assert len({i["KOKORO_UDP_PORT"] for i in instances}) == len(instances)
    common = env_file(deploy / "kokoro-tts" / "common.env")
    assert (common["KOKORO_PROCESSOR_BASE_PORT"], common["KOKORO_ANNOUNCE_BASE_PORT"]) == ("9002", "13000")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit file's check needs it")
    unit = tmp_path / "kokoro-tts@1.service"
    unit.write_text((deploy / "kokoro-tts@.service").read_text().replace("/opt/kokoro-tts", str(ROOT)))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
