"""The fast CPU graph: converted from the real int8 export, checked, cached, and run by the service.

The graph is converted once into the real model cache, by the first test that needs it (the other
test workers wait for it); tests that break a cache work on a copy in a temporary folder.
A frame is the model's 600-sample (25 ms) duration step: fast_graph.FRAME_SAMPLES.
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import onnx
import pytest
import soxr
from onnx import TensorProto, helper, numpy_helper

from conftest import VOICES_DIR, running_service
from kokoro_daemon.cli import build_parser, config_from_args
from kokoro_daemon.engines import create_engine
from kokoro_daemon.engines import fast_graph
from kokoro_daemon.engines.fast_graph import FRAME_SAMPLES, FastGraphError, compare_audio, convert, pitch_track
from kokoro_daemon.engines.model_asset import EMBEDDED_NAME, embedded_model_path
from kokoro_daemon.voices import VoiceLibrary

PHRASE = "Your appointment is confirmed for Tuesday at three thirty; is there anything else?"


@pytest.fixture(scope="session")
def fast_path():
    return fast_graph.fast_model_path()


@pytest.fixture(scope="session")
def models(fast_path):
    return onnx.load(str(embedded_model_path())), onnx.load(str(fast_path))


@pytest.fixture(scope="session")
def both_engines(fast_path):
    return create_engine("onnx", onnx_graph="int8"), create_engine("onnx", onnx_graph="fast")


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_every_conv_integer_becomes_a_float_2d_conv(models):
    int8, fast = models
    assert ops(int8).count("ConvInteger") == 87
    assert not {"ConvInteger", "QLinearConv"} & set(ops(fast))
    assert ops(fast).count("Conv") == ops(int8).count("ConvInteger") + ops(int8).count("Conv")
    weights = {t.name: t for t in fast.graph.initializer}
    for node in fast.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            assert w.data_type == TensorProto.FLOAT and len(w.dims) == 4 and w.dims[2] == 1, node.name


def test_int8_matmul_and_lstm_nodes_are_untouched(models):
    int8, fast = models

    def quantized(model):
        nodes = [n for n in model.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeLSTM")]
        init = {t.name: t.SerializeToString() for t in model.graph.initializer}
        return ({n.SerializeToString() for n in nodes},
                {name: init[name] for n in nodes for name in n.input if name in init})

    assert quantized(fast) == quantized(int8)
    assert ops(fast).count("MatMulInteger") == 148 and ops(fast).count("DynamicQuantizeLSTM") == 6


@pytest.mark.slow
def test_fast_graph_speaks_like_the_int8_graph(both_engines, g2p):
    int8, fast = both_engines
    voice = VoiceLibrary(VOICES_DIR).load("af_sky")
    phonemes = g2p.get(voice.lang)(PHRASE)
    reference, audio = (engine.synthesize(phonemes, voice.pack) for engine in (int8, fast))
    assert len(reference) > 3 * 24000 and np.abs(audio).max() > 0.05
    assert abs(len(audio) - len(reference)) <= 2 * FRAME_SAMPLES
    check = compare_audio(reference, audio)
    assert check["voiced_frames"] > 40


@pytest.mark.slow
def test_check_refuses_audio_played_two_percent_faster(both_engines, g2p):
    voice = VoiceLibrary(VOICES_DIR).load("af_sky")
    reference = both_engines[0].synthesize(g2p.get(voice.lang)(PHRASE), voice.pack)
    with pytest.raises(FastGraphError, match="length differs"):
        compare_audio(reference, soxr.resample(reference, 24000 * 1.02, 24000))


def tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    """A voice-like tone: a fundamental and two harmonics."""
    t = np.arange(int(24000 * seconds)) / 24000
    return sum(0.2 / k * np.sin(2 * np.pi * k * hz * t) for k in (1, 2, 3)).astype(np.float32)


def test_check_refuses_another_pitch_of_the_same_length():
    assert compare_audio(tone(150), tone(151))["median_pitch_diff_cents"] < 20
    with pytest.raises(FastGraphError, match="pitch differs by a median"):
        compare_audio(tone(150), tone(160))


def test_pitch_track_finds_a_tone():
    track = pitch_track(tone(180))
    assert len(track) == 24000 // FRAME_SAMPLES - 1
    assert np.allclose(track, 180, rtol=0.02)
    assert not pitch_track(np.random.default_rng(1).normal(0, 0.1, 24000)).any()


def quantized_conv_model(op: str, with_quantizer: bool = True):
    """A one-convolution model in the int8 export's style; ``op`` and a missing quantizer break it."""
    w = numpy_helper.from_array(np.full((2, 2, 3), 130, np.uint8), "w")
    w_zero = numpy_helper.from_array(np.array(128, np.uint8), "w_zero")
    nodes = []
    if with_quantizer:
        nodes.append(helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]))
    nodes.append(helper.make_node(op, ["xq", "w", "xz", "w_zero"], ["yq"], kernel_shape=[3], pads=[1, 1]))
    nodes += [helper.make_node("Cast", ["yq"], ["yf"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["xs", "ws"], ["scale"]),
              helper.make_node("Mul", ["yf", "scale"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5])]
    if not with_quantizer:
        inputs += [helper.make_tensor_value_info(n, TensorProto.UINT8, [1, 2, 5] if n == "xq" else [])
                   for n in ("xq", "xz")] + [helper.make_tensor_value_info("xs", TensorProto.FLOAT, [])]
    graph = helper.make_graph(nodes, "conv", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5])],
                              [w, w_zero, numpy_helper.from_array(np.array(0.5, np.float32), "ws")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


def test_conversion_of_a_small_conv_is_exact_up_to_input_quantization():
    import onnxruntime as ort
    model = quantized_conv_model("ConvInteger")
    x = {"x": np.linspace(-1, 1, 10, dtype=np.float32).reshape(1, 2, 5)}
    quantized = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]
    counts = convert(model)
    onnx.checker.check_model(model, full_check=True)
    assert counts["conv_integer_replaced"] == 1 and ops(model) == ["Unsqueeze", "Conv", "Squeeze"]
    converted = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]
    x_pad = np.pad(x["x"][0], ((0, 0), (1, 1)))
    every_weight_one = [x_pad[:, i:i + 3].sum() for i in range(5)]   # (130 - 128) * 0.5
    assert np.allclose(converted[0], [every_weight_one] * 2, atol=1e-5)
    assert np.allclose(quantized, converted, atol=0.05)


@pytest.mark.parametrize("op, with_quantizer", [("ConvInteger", False), ("QLinearConv", True)])
def test_conversion_refuses_a_quantized_conv_it_does_not_know(op, with_quantizer):
    with pytest.raises(FastGraphError):
        convert(quantized_conv_model(op, with_quantizer))


@pytest.fixture
def cache_copy(tmp_path, monkeypatch, fast_path):
    """A model cache in tmp_path with the int8 model and a sound copy of the fast graph and its record."""
    int8 = embedded_model_path()
    monkeypatch.setenv("KOKORO_CACHE_DIR", str(tmp_path))
    (tmp_path / EMBEDDED_NAME).symlink_to(int8)
    target = fast_graph.cached_path()
    assert target.parent == tmp_path
    for path in (fast_path, fast_path.with_name(fast_path.name + ".json")):
        shutil.copy(path, tmp_path / path.name)
    assert fast_graph.cache_problem(target) is None
    return target


def corrupt(target):
    with open(target, "r+b") as f:
        f.seek(target.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def stale(target):
    record_path = target.with_name(target.name + ".json")
    record = json.loads(record_path.read_text())
    record["converter"] = fast_graph.CONVERTER_VERSION - 1
    record_path.write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.parametrize("damage, problem", [(corrupt, "corrupt"), (stale, "another converter version")])
def test_a_corrupt_or_stale_cache_is_rebuilt(cache_copy, damage, problem, caplog):
    sound = fast_graph.sha256_file(cache_copy)
    damage(cache_copy)
    assert problem in fast_graph.cache_problem(cache_copy)
    caplog.set_level(logging.INFO, logger="kokoro_daemon.engines.fast_graph")
    assert fast_graph.fast_model_path() == cache_copy
    assert "building the fast graph" in caplog.text
    assert fast_graph.cache_problem(cache_copy) is None and fast_graph.sha256_file(cache_copy) == sound
    assert not list(cache_copy.parent.glob("*.tmp"))


@pytest.mark.slow
def test_the_option_reaches_the_ready_line(fast_path, g2p, monkeypatch, caplog):
    monkeypatch.setenv("KOKORO_ONNX_GRAPH", "fast")
    config = config_from_args(build_parser().parse_args([]), None)
    assert config.onnx_graph == "fast"
    assert build_parser().parse_args(["--onnx-graph", "int8"]).onnx_graph == "int8"
    caplog.set_level(logging.INFO, logger="kokoro_daemon.server")
    with running_service(None, g2p, onnx_graph="fast") as service:
        assert service.engine.model_path == fast_path
    assert "engine onnx (fast graph) on cpu" in caplog.text


@pytest.mark.slow
def test_a_given_model_file_is_used_as_is():
    engine = create_engine("onnx", model=str(embedded_model_path()), onnx_graph="fast")
    assert engine.model_path == embedded_model_path() and engine.label == f"onnx ({EMBEDDED_NAME})"
