"""A Kokoro ONNX export cut in two: the front end, run once per sentence, and the generator, run per window.

The cut tensors are found by the graph's structure, not by node names, so that the shipped int8
export, the fast graph derived from it and other exports of the same model all split:

- durations: what the single ``Round`` of the duration predictor becomes after its ``Clip``
  (frames per token, at least one);
- the harmonic source: the ``Concat`` after the graph's single ``STFT`` (magnitude and phase of
  the sine source) that the generator's noise convolutions read;
- the generator's input: what its first upsampling ``ConvTranspose`` reads through a ``LeakyRelu``:
  the one ConvTranspose that does not depend on the harmonic source but whose output is added to
  something that does.

The front end (tokens, style, speed -> durations, generator input, harmonic source) holds the
text encoders, the prosody predictor and the decoder up to the generator, about 10 % of the time;
the generator (generator input, harmonic source, style -> audio) holds the rest. Both are
extracted from the one model, so running them in turn gives the whole graph's audio bit for bit.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONVOLUTIONS = ("Conv", "ConvInteger")
# Nodes that may stand between a tensor and the convolution reading it (quantization, the fast graph's 2-D view).
PASS_THROUGH = ("DynamicQuantizeLinear", "Unsqueeze")


class StreamGraphError(RuntimeError):
    """The model cannot be cut into front end and generator; the engine falls back to whole sentences."""


@dataclass(frozen=True)
class CutTensors:
    durations: str
    generator_input: str
    harmonic_source: str
    style: str


@dataclass(frozen=True)
class SplitModel:
    front: bytes        # serialized ModelProto: tokens, style, speed -> durations, generator input, source
    generator: bytes    # serialized ModelProto: generator input, source, style -> audio
    cuts: CutTensors


class _Graph:
    def __init__(self, graph):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)

    def single(self, op: str):
        found = [n for n in self.graph.node if n.op_type == op]
        if len(found) != 1:
            raise StreamGraphError(f"expected one {op} node, found {len(found)}")
        return found[0]

    def feeds_convolution(self, tensor: str, depth: int = 3) -> bool:
        for node in self.consumers[tensor]:
            if node.op_type in CONVOLUTIONS:
                return True
            if depth and node.op_type in PASS_THROUGH and self.feeds_convolution(node.output[0], depth - 1):
                return True
        return False

    def descendants(self, tensor: str) -> set[int]:
        """ids of the nodes that depend on ``tensor``."""
        seen: set[int] = set()
        stack = [tensor]
        while stack:
            for node in self.consumers[stack.pop()]:
                if id(node) not in seen:
                    seen.add(id(node))
                    stack.extend(node.output)
        return seen


def find_cuts(model) -> CutTensors:
    """The cut tensors of a Kokoro ONNX ModelProto, found by structure (see the module's docstring)."""
    g = _Graph(model.graph)
    inputs = [i.name for i in model.graph.input]
    if len(inputs) != 3 or "style" not in inputs:
        raise StreamGraphError(f"inputs {inputs} are not Kokoro's (tokens, style, speed)")
    rounding = g.single("Round")
    clips = [n for n in g.consumers[rounding.output[0]] if n.op_type == "Clip"]
    durations = clips[0].output[0] if len(clips) == 1 else rounding.output[0]

    stft = g.single("STFT")
    source, frontier, seen = None, [stft.output[0]], set()
    while frontier and source is None:
        tensor = frontier.pop(0)
        if tensor in seen:
            continue
        seen.add(tensor)
        for node in g.consumers[tensor]:
            if node.op_type == "Concat" and g.feeds_convolution(node.output[0]):
                source = node.output[0]
                break
            frontier.extend(node.output)
    if source is None:
        raise StreamGraphError("no Concat after the STFT feeds a convolution: harmonic source not found")

    from_source = g.descendants(source)
    upsampling = [n for n in model.graph.node if n.op_type == "ConvTranspose" and id(n) not in from_source
                  and any(id(c) in from_source for c in g.consumers[n.output[0]])]
    if len(upsampling) != 1:
        raise StreamGraphError(f"expected one upsampling ConvTranspose joined by the source, found {len(upsampling)}")
    activation = g.producer.get(upsampling[0].input[0])
    if activation is None or activation.op_type != "LeakyRelu":
        raise StreamGraphError("the generator's first upsampling is not preceded by a LeakyRelu")
    return CutTensors(durations, activation.input[0], source, "style")


def split(model_path) -> SplitModel:
    """Cut the model at ``model_path`` into its front end and its generator."""
    import onnx
    from onnx.utils import Extractor
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file means no split, not no service
        raise StreamGraphError(f"cannot read {model_path}: {exc}") from None
    cuts = find_cuts(model)
    extractor = Extractor(model)
    inputs = [i.name for i in model.graph.input]
    front = extractor.extract_model(inputs, [cuts.durations, cuts.generator_input, cuts.harmonic_source])
    generator = extractor.extract_model([cuts.generator_input, cuts.harmonic_source, cuts.style],
                                        [o.name for o in model.graph.output])
    reads = {i.name for i in generator.graph.input}
    if reads != {cuts.generator_input, cuts.harmonic_source, cuts.style}:
        raise StreamGraphError(f"the generator reads more than the cut tensors: {sorted(reads)}")
    return SplitModel(front.SerializeToString(), generator.SerializeToString(), cuts)
