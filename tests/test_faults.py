"""Faults and hostile peers on the real sockets: the UDP control channel, processors that are absent,
stalled or gone, LLaMA connections that drop, races between them; nothing accepted is lost unsaid."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, VOICES_DIR, counter, expected_audio, wait_for
from kokoro_daemon.calls import Routing
from peers import LlamaClient, LlamaPeer, PiperProcessor, checked_audio, free_port, reply_frames, send_datagram

WAIT_S = 120.0




def numbered_call(service) -> int:
    """A call id N whose processor port base+N is free."""
    return free_port() - service.config.routing.processor_base_port


@pytest.mark.slow
def test_a_register_flood_costs_no_threads_and_no_calls(service, caplog):
    threads = threading.active_count()
    refused = counter("kokoro_protocol_errors_total", kind="register_refused")
    for n in range(1000):
        send_datagram(service.udp_address, f"REGISTER:{40000 + n if n % 2 else f'name-{n}'}")
        time.sleep(0.001)  # within what a UDP receive buffer holds: every datagram is read
    assert wait_for(lambda: counter("kokoro_protocol_errors_total", kind="register_refused") - refused >= 700, 10)
    time.sleep(0.3)
    assert threading.active_count() <= threads + 2
    assert len(service.registry) == 0 or all(not s.call_id.startswith("name-") for s in service.registry.snapshot())
    assert caplog.text.count("for no call refused") <= 1
    checked_audio(reply_frames(service.tcp_address, "after-flood", "Still here."))


@pytest.mark.slow
def test_datagrams_from_addresses_not_allowed_are_ignored(make_service, caplog):
    guarded = make_service(allow_from=("10.9.8.0/24",))
    with LlamaPeer(guarded.tcp_address) as llama:
        llama.reply("guarded-1", "Hello there.")
        assert wait_for(lambda: guarded.registry.get("guarded-1") is not None, 10)
        send_datagram(guarded.udp_address, "BYE:guarded-1")
        assert wait_for(lambda: "which --allow-from does not list" in caplog.text, 5)
        assert guarded.registry.get("guarded-1") is not None


@pytest.mark.slow
def test_a_taken_udp_port_refuses_to_start(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, str(ROOT / "kokoro_service.py"), "--engine", "onnx", "--device", "cpu",
                               "-t", str(free_port()), "-u", str(port), "--http-port", "0", "--voices-dir", str(VOICES_DIR)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1
    assert f"UDP port 127.0.0.1:{port} for REGISTER/BYE is not free" in proc.stderr


@pytest.mark.slow
def test_a_processor_absent_for_one_connect_window_is_tried_again_on_its_next_register(make_service, caplog):
    caplog.set_level(logging.INFO, logger="kokoro_daemon")
    service = make_service(routing=Routing(mode="processor-only", link="dial-out"))
    call_id = numbered_call(service)
    with LlamaPeer(service.tcp_address) as llama:
        llama.reply(call_id, "Please hold the line.")
        assert wait_for(lambda: service.registry.get(str(call_id)) is not None, 10)
        call = service.registry.get(str(call_id))
        for linker in call._linkers:  # noqa: SLF001 -- shorten the wait for the first window to end
            linker.cancel()
        send_datagram(service.udp_address, f"REGISTER:{call_id}")  # nobody listens on base+N yet
        assert wait_for(lambda: "cannot connect to its processor" in caplog.text, 20)
        with PiperProcessor(call_id, service_udp=service.udp_address,
                            base=service.config.routing.processor_base_port) as processor:  # registers again
            assert processor.wait_frames(1, WAIT_S), processor.errors
            assert processor.errors == []


@pytest.mark.slow
def test_a_stalled_processor_is_given_up_with_a_log_line(make_service, caplog):
    service = make_service(routing=Routing(max_lead_s=30.0))  # send far ahead, to fill the socket sooner
    call_id = numbered_call(service)
    port = service.config.routing.processor_base_port + call_id
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(10)
    accepted = []

    def accept_and_never_read():
        sock, _ = listener.accept()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        accepted.append(sock)

    threading.Thread(target=accept_and_never_read, daemon=True).start()
    with LlamaPeer(service.tcp_address) as llama:
        send_datagram(service.udp_address, f"REGISTER:{call_id}")
        llama.reply(call_id, " ".join(["This sentence is long enough to fill a small socket buffer quickly."] * 12))
        assert wait_for(lambda: "the processor read nothing for 5 s; dropping the link" in caplog.text, WAIT_S)
        assert wait_for(lambda: service.registry.get(str(call_id)) is None, 10)
    for sock in accepted:
        sock.close()
    listener.close()


@pytest.mark.slow
def test_text_accepted_for_a_linked_call_is_spoken_after_llama_goes(service):
    text = "Your order has shipped. It will arrive on Friday. Thank you for your patience."
    call_id = numbered_call(service)
    with PiperProcessor(call_id, service_udp=service.udp_address,
                        base=service.config.routing.processor_base_port) as processor:
        with LlamaPeer(service.tcp_address) as llama:
            llama.reply(call_id, text)
        # LLaMA restarted right after sending
        assert wait_for(lambda: processor.audio_s > 4.0, WAIT_S), f"{processor.audio_s:.2f} s heard"
        assert processor.errors == []
        send_datagram(service.udp_address, f"BYE:{call_id}")


def test_a_piper_era_processor_whose_register_was_lost_is_found_at_its_port_after_llama_goes(service):
    """UDP may lose the REGISTER: the taken listen port alone must lead to the processor, even when LLaMA
    closes while the service turns from listening to dialling out."""
    call_id = numbered_call(service)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nowhere:
        nowhere.bind(("127.0.0.1", 0))  # the REGISTER goes here and is never read
        with PiperProcessor(call_id, service_udp=nowhere.getsockname(),
                            base=service.config.routing.processor_base_port) as processor:
            with LlamaPeer(service.tcp_address) as llama:
                llama.reply(call_id, "Your order has shipped.")
                time.sleep(0.1)  # LLaMA goes once the service has found the port taken
            assert processor.wait_frames(1, WAIT_S), processor.errors
            assert processor.errors == []
    assert wait_for(lambda: service.registry.get(str(call_id)) is None, 10)


@pytest.mark.slow
def test_a_register_racing_a_disconnect_leaves_no_thread_behind(service):
    threads = threading.active_count()
    for n in range(30):
        call_id = numbered_call(service)
        with LlamaClient(service.tcp_address, str(call_id)):
            send_datagram(service.udp_address, f"REGISTER:{call_id}")
    time.sleep(0.5)
    assert wait_for(lambda: len(service.registry) == 0, 15)
    assert wait_for(lambda: threading.active_count() <= threads + 1, 15), threading.enumerate()


@pytest.mark.slow
def test_drops_are_counted_with_their_reason_and_logged_once_per_call(service, caplog):
    caplog.set_level(logging.INFO, logger="kokoro_daemon")
    cancelled = counter("kokoro_segments_cancelled_total")
    text_dropped = counter("kokoro_text_dropped_total", reason="call_ended")
    with LlamaClient(service.tcp_address, "drops-1") as client:
        client.text(" ".join(f"Sentence number {n} is here." for n in range(1, 12)))
        client.read_frame()
        send_datagram(service.udp_address, "BYE:drops-1")
        assert wait_for(lambda: service.registry.get("drops-1") is None, 10)
        client.text("Half a sentence with no end")  # on a connection whose call just ended
        client.text(" and then the rest.")
    assert wait_for(lambda: counter("kokoro_segments_cancelled_total") > cancelled, 10)
    assert caplog.text.count("call drops-1: ended (BYE from its processor)") == 1
    assert "queued segment(s) dropped" in caplog.text
    assert counter("kokoro_text_dropped_total", reason="call_ended") >= text_dropped


def test_call_ids_with_control_characters_are_escaped_in_the_log(service, caplog):
    caplog.set_level(logging.INFO, logger="kokoro_daemon")
    checked_audio(reply_frames(service.tcp_address, "evil\nINFO forged line\x1b[2J", "Hello."))
    assert "evil\\nINFO forged line\\x1b[2J" in caplog.text
    assert "\nINFO forged line" not in caplog.text


@pytest.mark.slow
def test_text_beyond_a_calls_queue_bound_is_refused_with_a_log_line_and_counted(service, engine, g2p, caplog):
    refused = counter("kokoro_text_dropped_total", reason="queue_full")
    with LlamaClient(service.tcp_address, "flooding-1") as client:
        client.text("word " * 20_000)  # 100,000 characters at once: more than any reply, over the bound
        client.text("This one is spoken.")
        client.bye()
        frames = client.read_until_bye()
    np.testing.assert_array_equal(checked_audio(frames), expected_audio(service, engine, g2p, "This one is spoken."))
    assert counter("kokoro_text_dropped_total", reason="queue_full") - refused == 100_000
    assert "text chunk of 100000 characters refused" in caplog.text
