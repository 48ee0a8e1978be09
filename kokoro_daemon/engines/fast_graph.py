"""The "fast" CPU graph: the embedded int8 export with its convolutions back in float, as 2-D.

The decoder's convolutions (``ConvInteger`` in the int8 export) are most of the model's time
on CPU. A float ``Conv`` of height 1 is picked up by onnxruntime's NCHWc optimisation
(ORT_ENABLE_ALL on x86) and runs on its blocked kernels; a float 1-D ``Conv`` is not. So each
``ConvInteger`` with its run-time input quantization, its run-time-quantized bias and its output
rescale becomes one float 2-D ``Conv`` whose weights are the dequantized int8 weights
``(Wq - Wz) * Ws`` and whose bias is the original float bias; the int8 MatMul and LSTM nodes
stay as they are. Whether that is faster depends on the CPU: where int8 dot products are fast
(AVX-512 VNNI) it is not, which is why ``int8`` stays the default (bench/graphs.py measures it).

The graph is built once from the assembled int8 model, checked (onnx checker; a fixed phrase
whose audio length and pitch track must match the int8 graph's) and cached beside it under a
name carrying the int8 model's checksum, with a sidecar holding its own checksum: a corrupt or
stale cache is rebuilt, never used. ``python -m kokoro_daemon.engines.fast_graph`` builds it
ahead of the first start (``KOKORO_ONNX_GRAPH=fast ./start-kokoro.sh --setup-only`` runs it).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import FRAME_SAMPLES, SAMPLE_RATE
from .model_asset import (EMBEDDED_NAME, EMBEDDED_SHA256, cache_dir, default_vocab, embedded_model_path,
                          session_options, sha256_file)

log = logging.getLogger(__name__)

# Bump when the conversion changes: a graph cached by another version is stale and rebuilt.
CONVERTER_VERSION = 1
FAST_PREFIX = EMBEDDED_NAME.replace(".int8.onnx", ".fast-")

# A fixed check phrase ("Your appointment is booked for Monday at nine.") in Kokoro phonemes.
CHECK_PHONEMES = "jʊɹ ɐpˈYntmənt ɪz bˈʊkt fɔɹ mˈʌndA æt nˈIn."
MAX_LENGTH_DIFF_FRAMES = 2
# Pitch: frames voiced in both graphs' audio must agree to within this median, in cents ...
MAX_MEDIAN_PITCH_CENTS = 50.0
# ... and the graphs must agree on which frames are voiced at all (the two graphs: 0.95-0.99
# on test phrases; the same audio played 2% faster: about 0.5; noise: 0).
MIN_VOICING_AGREEMENT = 0.8
PITCH_RANGE_HZ = (60.0, 400.0)
VOICED_CORRELATION = 0.5

QUANTIZED_CONVS = ("ConvInteger", "QLinearConv")
FLOAT = 1   # onnx.TensorProto.FLOAT, without importing onnx at module load


class FastGraphError(RuntimeError):
    """The int8 export does not have the shape the conversion expects, or the result fails its check."""


# -- conversion -----------------------------------------------------------------------

@dataclass
class _Replacement:
    """One quantized convolution and what stands in for it."""
    first: object          # the node the new ones are placed at (the convolution)
    removed: list          # nodes of the quantized pattern that go away outright
    x: str                 # the float input
    weight: np.ndarray     # float, (C_out, C_in/group, k)
    bias: str | None       # the float bias initializer, or None
    y: str                 # the float output the rest of the graph reads
    attrs: dict


class _Graph:
    """Producers, consumers and initializers of an onnx graph, for pattern matching."""

    def __init__(self, graph):
        from onnx import numpy_helper
        self.graph = graph
        self.init = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self._array = numpy_helper.to_array

    def array(self, name: str, where) -> np.ndarray:
        if name not in self.init:
            raise FastGraphError(f"{where.name}: {name!r} is not a constant")
        return self._array(self.init[name])

    def only_consumer(self, name: str, op: str, where):
        users = self.consumers[name]
        if len(users) != 1 or users[0].op_type != op:
            raise FastGraphError(f"{where.name}: {name!r} feeds {[u.op_type for u in users]}, expected one {op}")
        return users[0]

    def made_by(self, name: str, op: str, where):
        node = self.producer.get(name)
        if node is None or node.op_type != op:
            raise FastGraphError(f"{where.name}: {name!r} comes from {node.op_type if node else 'no node'}, "
                                 f"expected {op}")
        return node


def _attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _other(node, name: str) -> str:
    """The other input of a two-input node."""
    if len(node.input) != 2 or name not in node.input:
        raise FastGraphError(f"{node.name}: expected two inputs including {name!r}, got {list(node.input)}")
    return node.input[1] if node.input[0] == name else node.input[0]


def _match_conv_integer(g: _Graph, conv) -> _Replacement:
    """DynamicQuantizeLinear -> ConvInteger [-> Add(quantized bias)] -> Cast -> Mul(x_scale * w_scale).

    The quantized bias is Reshape(Cast(Floor(Div(bias, x_scale * w_scale)))), computed at run time.
    """
    if len(conv.input) < 2:
        raise FastGraphError(f"{conv.name}: ConvInteger with {len(conv.input)} inputs")
    quantize = g.made_by(conv.input[0], "DynamicQuantizeLinear", conv)
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] != quantize.output[2]:
        raise FastGraphError(f"{conv.name}: input zero point is not its DynamicQuantizeLinear's")
    w_q = g.array(conv.input[1], conv).astype(np.int32)
    w_zero = g.array(conv.input[3], conv).astype(np.int32) if len(conv.input) > 3 and conv.input[3] else 0
    if w_q.ndim != 3:
        raise FastGraphError(f"{conv.name}: weight of rank {w_q.ndim}; only 1-D convolutions are converted")
    removed = [conv]
    after = g.consumers[conv.output[0]]
    bias = None
    if len(after) == 1 and after[0].op_type == "Add":
        add = after[0]
        reshape = g.made_by(_other(add, conv.output[0]), "Reshape", conv)
        to_int = g.made_by(reshape.input[0], "Cast", conv)
        floor = g.made_by(to_int.input[0], "Floor", conv)
        divide = g.made_by(floor.input[0], "Div", conv)
        bias, bias_scale = divide.input
        if bias not in g.init:
            raise FastGraphError(f"{conv.name}: bias {bias!r} is not a constant")
        removed += [add, reshape, to_int, floor, divide]
        to_float = g.only_consumer(add.output[0], "Cast", conv)
    else:
        to_float = g.only_consumer(conv.output[0], "Cast", conv)
        bias_scale = None
    if _attrs(to_float).get("to") != FLOAT:
        raise FastGraphError(f"{conv.name}: output cast to type {_attrs(to_float).get('to')}, not float")
    rescale = g.only_consumer(to_float.output[0], "Mul", conv)
    scale = _other(rescale, to_float.output[0])
    if bias_scale is not None and bias_scale != scale:
        raise FastGraphError(f"{conv.name}: the bias is quantized with another scale than the output's")
    scale_mul = g.made_by(scale, "Mul", conv)
    w_scale = _other(scale_mul, quantize.output[1])
    w_scale_value = g.array(w_scale, conv).astype(np.float32)
    if w_scale_value.size not in (1, w_q.shape[0]) or np.size(w_zero) not in (1, w_q.shape[0]):
        raise FastGraphError(f"{conv.name}: weight scale/zero point neither per tensor nor per output channel")
    per_channel = (-1, 1, 1)
    weight = (w_q - np.reshape(w_zero, per_channel if np.size(w_zero) > 1 else ())).astype(np.float32)
    weight *= np.reshape(w_scale_value, per_channel if w_scale_value.size > 1 else ())
    removed += [to_float, rescale]
    return _Replacement(first=conv, removed=removed, x=quantize.input[0], weight=weight, bias=bias,
                        y=rescale.output[0], attrs=_attrs(conv))


def _match_float_conv(g: _Graph, conv) -> _Replacement | None:
    """A float 1-D Conv with constant weights: made 2-D as well, so it runs blocked too."""
    if len(conv.input) < 2 or conv.input[1] not in g.init or len(g.init[conv.input[1]].dims) != 3:
        return None
    bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
    return _Replacement(first=conv, removed=[conv], x=conv.input[0], weight=g.array(conv.input[1], conv),
                        bias=bias, y=conv.output[0], attrs=_attrs(conv))


def _conv2d_attrs(attrs: dict, kernel: int) -> dict:
    """The 1-D attributes with a leading height axis of size 1 (kernel 1, stride 1, no padding)."""
    out = {"kernel_shape": [1, kernel], "group": attrs.get("group", 1)}
    if "strides" in attrs:
        out["strides"] = [1, *attrs["strides"]]
    if "dilations" in attrs:
        out["dilations"] = [1, *attrs["dilations"]]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad != "NOTSET":
        out["auto_pad"] = auto_pad
    elif "pads" in attrs:
        begin, end = attrs["pads"]
        out["pads"] = [0, begin, 0, end]
    return out


def convert(model) -> dict:
    """Rewrite ``model`` (an onnx ModelProto) in place; return node counts before and after.

    Raises FastGraphError, naming the node, when any quantized convolution is not in the
    expected pattern: a half-converted graph is never produced.
    """
    from onnx import helper, numpy_helper
    graph = model.graph
    before = Counter(n.op_type for n in graph.node)
    kept = {n.SerializeToString() for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeLSTM")}
    g = _Graph(graph)
    replacements = []
    for node in graph.node:
        if node.op_type == "ConvInteger":
            replacements.append(_match_conv_integer(g, node))
        elif node.op_type in QUANTIZED_CONVS:
            raise FastGraphError(f"{node.name}: {node.op_type} is not handled by the conversion")
        elif node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
            match = _match_float_conv(g, node)
            if match:
                replacements.append(match)
    axes = "fast_graph_height_axis"
    graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), axes))
    at = {id(r.first): r for r in replacements}
    gone = {id(n) for r in replacements for n in r.removed}
    unsqueezed: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        r = at.get(id(node))
        if r is not None:
            stem = r.y.replace("/", "_").strip("_")
            if r.x not in unsqueezed:
                unsqueezed[r.x] = f"{r.x}_height1"
                nodes.append(helper.make_node("Unsqueeze", [r.x, axes], [unsqueezed[r.x]], name=f"{stem}_unsqueeze"))
            weight = f"{stem}_weight2d"
            graph.initializer.append(numpy_helper.from_array(r.weight[:, :, None, :].astype(np.float32), weight))
            inputs = [unsqueezed[r.x], weight] + ([r.bias] if r.bias else [])
            nodes.append(helper.make_node("Conv", inputs, [f"{r.y}_height1"], name=f"{stem}_conv2d",
                                          **_conv2d_attrs(r.attrs, r.weight.shape[-1])))
            nodes.append(helper.make_node("Squeeze", [f"{r.y}_height1", axes], [r.y], name=f"{stem}_squeeze"))
        elif id(node) not in gone:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph)
    after = Counter(n.op_type for n in graph.node)
    left = {op: after[op] for op in QUANTIZED_CONVS if after[op]}
    if left:
        raise FastGraphError(f"quantized convolutions left after conversion: {left}")
    if {n.SerializeToString() for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeLSTM")} != kept:
        raise FastGraphError("the conversion changed int8 MatMul or LSTM nodes")
    return {"before": dict(before), "after": dict(after), "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()), "conv_integer_replaced": before["ConvInteger"],
            "float_conv_made_2d": sum(1 for r in replacements if r.first.op_type == "Conv")}


def _drop_unused(graph) -> None:
    """Remove the nodes, initializers and shape records the replaced patterns leave unread."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        live = [n for n in graph.node if any(o in read for o in n.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    read = {i for n in graph.node for i in n.input} | outputs
    initializers = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    made = {o for n in graph.node for o in n.output}
    value_info = [v for v in graph.value_info if v.name in made]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


# -- checking -------------------------------------------------------------------------

def pitch_track(audio: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """F0 in Hz per FRAME_SAMPLES hop (0 = unvoiced), by normalized autocorrelation.

    Each frame is a 2-hop Hann window; its autocorrelation, divided by the zero-lag value,
    is searched for its highest peak at lags of PITCH_RANGE_HZ; the frame is voiced when that
    peak reaches VOICED_CORRELATION and the frame is not near-silent (-40 dB of the loudest).
    """
    window = 2 * FRAME_SAMPLES
    low_lag, high_lag = int(rate / PITCH_RANGE_HZ[1]), int(rate / PITCH_RANGE_HZ[0])
    count = max(0, (len(audio) - window) // FRAME_SAMPLES + 1)
    if count == 0:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), window)[::FRAME_SAMPLES][:count]
    frames = (frames - frames.mean(axis=1, keepdims=True)) * np.hanning(window)
    spectrum = np.fft.rfft(frames, n=2 * window, axis=1)
    corr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, : high_lag + 1]
    energy = corr[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = np.where(energy[:, None] > 0, corr / energy[:, None], 0.0)
    lags = low_lag + np.argmax(normalized[:, low_lag:], axis=1)
    peak = normalized[np.arange(count), lags]
    loud = energy > energy.max() * 1e-4
    return np.where((peak >= VOICED_CORRELATION) & loud, rate / lags, 0.0)


def compare_audio(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Length difference in frames, voicing agreement and median pitch difference of two renderings.

    Raises FastGraphError when they differ by more than the stated tolerances.
    """
    length_frames = abs(len(candidate) - len(reference)) / FRAME_SAMPLES
    ref, cand = pitch_track(reference), pitch_track(candidate)
    n = min(len(ref), len(cand))
    ref, cand = ref[:n], cand[:n]
    either, both = (ref > 0) | (cand > 0), (ref > 0) & (cand > 0)
    agreement = float(both.sum() / either.sum()) if either.any() else 0.0
    cents = float(np.median(np.abs(1200 * np.log2(cand[both] / ref[both])))) if both.any() else float("inf")
    result = {"samples": [len(reference), len(candidate)], "length_diff_frames": length_frames,
              "voiced_frames": int(both.sum()), "voicing_agreement": round(agreement, 4),
              "median_pitch_diff_cents": round(cents, 2)}
    failures = []
    if length_frames > MAX_LENGTH_DIFF_FRAMES:
        failures.append(f"length differs by {length_frames:.1f} frames (> {MAX_LENGTH_DIFF_FRAMES})")
    if agreement < MIN_VOICING_AGREEMENT:
        failures.append(f"voicing agrees on {agreement:.0%} of frames (< {MIN_VOICING_AGREEMENT:.0%})")
    if cents > MAX_MEDIAN_PITCH_CENTS:
        failures.append(f"pitch differs by a median {cents:.0f} cents (> {MAX_MEDIAN_PITCH_CENTS:.0f})")
    if failures:
        raise FastGraphError(f"fast graph audio differs from the int8 graph's: {'; '.join(failures)} ({result})")
    return result


def check_inputs() -> dict[str, np.ndarray]:
    """The check phrase's model inputs, with an embedded (always present) voice's style."""
    from ..voices import VoiceLibrary
    vocab = default_vocab()
    packs = VoiceLibrary().embedded()
    if not packs:
        raise FastGraphError("no embedded voice pack to check the fast graph with")
    pack = packs[sorted(packs)[0]]
    tokens = [0, *(vocab[ch] for ch in CHECK_PHONEMES if ch in vocab), 0]
    return {"tokens": np.array([tokens], dtype=np.int64),
            "style": pack[len(tokens) - 3].reshape(1, -1).astype(np.float32),   # the style for n phonemes: pack[n - 1]
            "speed": np.array([1.0], dtype=np.float32)}


def verify(reference: Path, candidate: Path) -> dict:
    """onnx checker on the candidate, then the check phrase on both graphs compared by compare_audio."""
    import onnx
    import onnxruntime as ort
    try:
        onnx.checker.check_model(str(candidate), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise FastGraphError(f"onnx checker refuses the fast graph: {exc}") from None
    inputs = check_inputs()
    audio = [ort.InferenceSession(str(path), sess_options=session_options(),
                                  providers=["CPUExecutionProvider"]).run(None, inputs)[0].reshape(-1)
             for path in (reference, candidate)]
    return compare_audio(*audio)


# -- the cache ------------------------------------------------------------------------

def cached_path() -> Path:
    """Where the fast graph of the embedded model lives: beside it, named by its checksum."""
    return cache_dir() / f"{FAST_PREFIX}{EMBEDDED_SHA256[:12]}.onnx"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def cache_problem(path: Path) -> str | None:
    """Why the cached graph at ``path`` cannot be used, or None when it is sound."""
    if not path.exists():
        return "not built yet"
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its record is unreadable ({exc})"
    if record.get("source_sha256") != EMBEDDED_SHA256 or record.get("converter") != CONVERTER_VERSION:
        return "it was built from another model or by another converter version"
    if sha256_file(path) != record.get("sha256"):
        return "its checksum does not match its record (corrupt)"
    return None


def build(source: Path, target: Path) -> dict:
    """Convert ``source``, verify the result and move it to ``target`` with its record; return the record."""
    import onnx
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        model = onnx.load(str(source))
        counts = convert(model)
        onnx.save(model, str(tmp))
        del model
        check = verify(source, tmp)
        record = {"source": source.name, "source_sha256": EMBEDDED_SHA256, "converter": CONVERTER_VERSION,
                  "sha256": sha256_file(tmp), "nodes": counts, "check": check}
        tmp.replace(target)
        _write_atomically(_sidecar(target), json.dumps(record, indent=1) + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    for old in target.parent.glob(f"{FAST_PREFIX}*.onnx*"):
        if old.name not in (target.name, _sidecar(target).name, _lock(target).name) and not old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)
    return record


def _lock(target: Path) -> Path:
    return target.with_name(f"{target.name}.lock")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def fast_model_path() -> Path:
    """The fast graph of the embedded model, converted and verified on first use, then from the cache."""
    target = cached_path()
    if cache_problem(target) is None:
        return target
    # Processes starting together (instances, test workers) build it once: the others wait and use it.
    with open(_lock(target), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        problem = cache_problem(target)
        if problem is None:
            return target
        log.info("building the fast graph at %s (%s); this takes a few seconds, once", target, problem)
        record = build(embedded_model_path(), target)
    log.info("fast graph built: %d ConvInteger replaced by float 2-D Conv; check: %s",
             record["nodes"]["conv_integer_replaced"], record["check"])
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kokoro_daemon.engines.fast_graph",
                                     description="Build (once) and check the fast CPU graph in the model cache.")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even when a sound cached graph exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s fast_graph: %(message)s")
    try:
        if args.rebuild:
            cached_path().unlink(missing_ok=True)
        path = fast_model_path()
    except RuntimeError as exc:   # FastGraphError, or the embedded model cannot be assembled
        log.error("%s", exc)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
