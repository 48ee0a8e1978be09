"""Windowed synthesis on the embedded model: the cut graph, the spoken span, the windows and their seams,
and a reply's first window served before the rest of another call's sentence."""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soxr
from onnx import helper

from conftest import VOICES_DIR, judge, write_wav
from kokoro_daemon.calls import Resampler
from kokoro_daemon.engines.model_asset import embedded_model_path, session_options
from kokoro_daemon.engines.onnx_engine import OnnxEngine
from kokoro_daemon.engines.stream_graph import StreamGraphError, find_cuts, split
from kokoro_daemon.engines.windows import (CROSSFADE_SAMPLES, LEAD_FRAMES, TAIL_FRAMES, WHOLE, WindowPlan,
                                           speech_span)
from kokoro_daemon.voices import VoiceLibrary
from peers import LlamaClient

LONG = ("I have booked your appointment with doctor Patel for next Tuesday morning in the big old "
        "building on the second floor right next to the pharmacy and the parking garage entrance")


@pytest.fixture(scope="module")
def sky():
    return VoiceLibrary(str(VOICES_DIR)).load("af_sky")


def max_step(audio: np.ndarray) -> float:
    return float(np.abs(np.diff(audio)).max())


@pytest.mark.slow
def test_the_cut_graph_gives_the_whole_graph_audio_bit_for_bit(engine, g2p, sky):
    phonemes = g2p.get("a")("Thank you for calling, how can I help you?")
    inputs = engine._inputs(phonemes, sky.pack, 1.0)  # noqa: SLF001
    whole = ort.InferenceSession(str(embedded_model_path()), session_options()).run(None, inputs)[0].reshape(-1)
    durations, features, source = engine.front.run(None, inputs)
    halves = engine._run_generator(features, source, inputs["style"])  # noqa: SLF001
    assert engine.streams and halves.size == whole.size == int(durations.sum()) * engine.frame_samples
    np.testing.assert_array_equal(halves, whole)


def test_the_cut_tensors_are_found_by_structure_in_both_embedded_graphs():
    from kokoro_daemon.engines.fast_graph import fast_model_path
    cuts = [find_cuts(onnx.load(str(path), load_external_data=False))
            for path in (embedded_model_path(), fast_model_path())]
    for found in cuts:
        assert found.style == "style" and len({found.durations, found.generator_input, found.harmonic_source}) == 3
    assert cuts[0] == cuts[1]   # the fast graph rewrites convolutions, not the cut points


@pytest.mark.slow
def test_a_model_that_cannot_be_cut_runs_whole_and_says_why(tmp_path, g2p, sky, caplog):
    model = onnx.load(str(embedded_model_path()))
    speed = next(i for i in model.graph.input if i.name == "speed")
    # a second Round (its result unused) makes the duration predictor's one ambiguous
    model.graph.node.append(helper.make_node("Round", [speed.name], ["unused_round"], name="unused_round"))
    path = tmp_path / "two-rounds.onnx"
    onnx.save(model, str(path))
    with pytest.raises(StreamGraphError, match="expected one Round node, found 2"):
        split(path)
    caplog.set_level(logging.WARNING, logger="kokoro_daemon.engines.onnx_engine")
    fallback = OnnxEngine(model_path=path)
    assert not fallback.streams
    assert "two-rounds.onnx cannot be cut into front end and generator (expected one Round node, found 2): " \
           "synthesizing whole segments" in caplog.text
    audio = fallback.synthesize(g2p.get("a")("Thank you."), sky.pack)
    assert audio.dtype == np.float32 and audio.size > 12000 and np.abs(audio).max() > 0.1


def test_the_spoken_span_keeps_short_pads_of_the_boundary_silence():
    #            pad "h"  "i"  "."  pad
    durations = [18, 3, 4, 9, 12]
    assert speech_span("hi.", durations) == (18 - LEAD_FRAMES, 18 + 7 + TAIL_FRAMES)
    assert speech_span("hi.", [1, 3, 4, 1, 1]) == (0, 10)   # pads shorter than the keep: nothing to skip
    assert speech_span("...", [5, 1, 1, 1, 5]) == (0, 13)   # nothing spoken: the whole call
    assert speech_span(", hi", [5, 2, 2, 3, 4, 6]) == (5 + 4 - LEAD_FRAMES, 22)


def test_window_plans_cover_every_frame_once_with_a_small_first_window():
    plan = WindowPlan(first_frames=20, growth=2.0, max_frames=160, min_last_frames=16)
    assert plan.spans(30) == [(0, 30)]                       # no sliver after the first window
    assert plan.spans(60) == [(0, 20), (20, 60)]
    assert plan.spans(700) == [(0, 20), (20, 60), (60, 140), (140, 300), (300, 460), (460, 620), (620, 700)]
    assert plan.spans(630) == [(0, 20), (20, 60), (60, 140), (140, 300), (300, 460), (460, 630)]
    for frames in range(1, 900, 7):
        spans = plan.spans(frames)
        assert spans[0][0] == 0 and spans[-1][1] == frames
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert spans[0][1] <= 20 + 16
    assert WHOLE.spans(5000) == [(0, 5000)]


@pytest.mark.slow
def test_windows_are_as_long_as_the_whole_sentence_and_their_seams_are_no_sharper(engine, g2p, sky):
    phonemes = g2p.get("a")(LONG)
    whole = engine.synthesize(phonemes, sky.pack)
    windows = engine.prepare(phonemes, sky.pack, 1.0, WindowPlan())
    assert len(windows) >= 4 and windows[0].first and windows[-1].last
    pieces = [engine.render(window) for window in windows]
    windowed = np.concatenate(pieces)
    assert windowed.size == whole.size
    # the first window is sent whole but for the crossfade it holds back; each later one moves the seam on
    fs = engine.frame_samples
    assert pieces[0].size == windows[0].stop * fs - CROSSFADE_SAMPLES // 2
    ends = np.cumsum([piece.size for piece in pieces])[:-1]
    for end in ends:
        seam = windowed[end - CROSSFADE_SAMPLES: end + CROSSFADE_SAMPLES]
        assert max_step(seam) <= max_step(whole)
    # the same speech: the loudness of each 100 ms follows the whole sentence's
    frames = whole.size // 2400
    loud = [np.sqrt(np.mean(a[: frames * 2400].reshape(frames, 2400) ** 2, axis=1)) for a in (whole, windowed)]
    assert np.corrcoef(*loud)[0, 1] > 0.9


@pytest.mark.judge
def test_a_windowed_sentence_is_understood_as_the_whole_one_is(engine, g2p, sky, tmp_path):
    phonemes = g2p.get("a")(LONG)
    windowed = np.concatenate([engine.render(w) for w in engine.prepare(phonemes, sky.pack, 1.0, WindowPlan())])
    whole = engine.synthesize(phonemes, sky.pack)
    result = judge(tmp_path, [(write_wav(tmp_path / f"{name}.wav", audio, 24000), LONG)
                              for name, audio in (("windowed", windowed), ("whole", whole))])
    wer = {row["wav"].rsplit("/", 1)[-1]: row["wer"] for row in result["files"]}
    assert wer["windowed.wav"] <= wer["whole.wav"] + 0.05, result


def test_a_sentence_resampled_in_pieces_is_resampled_as_if_whole():
    rng = np.random.default_rng(7)
    audio = rng.standard_normal(24000).astype(np.float32) * 0.1
    whole = soxr.ResampleStream(24000, 8000, 1, quality="HQ").resample_chunk(audio, last=True)
    resample = Resampler(8000)
    cuts = [0, 11880, 35880, 24000]
    pieces = [resample(audio[a:b], 24000, last=(b == 24000)) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-6)
    assert resample(audio, 24000, last=True).size == whole.size     # a new stream after the last piece


@pytest.mark.slow
def test_a_new_reply_is_spoken_before_the_rest_of_another_calls_long_sentence(make_service, caplog):
    """One engine worker: the second call's first window goes ahead of the first call's remaining windows,
    where whole-sentence synthesis would make it wait for all of the first call's sentence."""
    service = make_service(cache_mb=0, synthesis="stream")
    caplog.set_level(logging.DEBUG, logger="kokoro_daemon.scheduler")
    with LlamaClient(service.tcp_address, "stream-long") as long_call, \
            LlamaClient(service.tcp_address, "stream-short") as short_call:
        long_call.text(LONG + ".")
        long_call.bye()
        assert long_call.read_frame() is not None
        short_call.text("Your table is ready.")
        short_call.bye()
        heard = [long_call.read_until_bye(), short_call.read_until_bye()]
    assert all(frames for frames in heard)
    units = [(record.getMessage().split(":")[0], "first unit" in record.getMessage()) for record in caplog.records
             if record.name == "kokoro_daemon.scheduler" and " characters in " in record.getMessage()]
    short_first = units.index(("stream-short", True))
    assert ("stream-long", False) in units[short_first + 1:], units
