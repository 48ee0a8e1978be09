"""The kokoro (torch) engine's own code paths, windowed and whole (KPipeline.infer), with no hub access.

The real weights are not available offline, so a small random model of the same architecture
is built from the real config: the vocabulary, n_token, style_dim (so the real 256-wide voice
packs fit), n_mels, max_dur and the 512-position context stay; the ALBERT, the layer count and
the iSTFTNet generator shrink. hidden_dim and upsample_initial_channel stay 512: kokoro's
Decoder hard-codes 512/1024 channels around them. Its audio is noise and is never judged.
"""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from conftest import SHARED, VOICES_DIR
from kokoro_daemon.engines import MAX_PHONEMES, create_engine, split_phonemes
from kokoro_daemon.engines import _auto_choice  # noqa: PLC2701
from kokoro_daemon.engines.torch_engine import TorchEngine, resolve_device
from kokoro_daemon.engines.windows import CROSSFADE_SAMPLES, WHOLE, WindowPlan, speech_span
from kokoro_daemon.server import KokoroService, ServiceConfig
from peers import LlamaClient

pytestmark = pytest.mark.filterwarnings("ignore:dropout option adds dropout:UserWarning",
                                        "ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")

DURATION_BIAS = -4.0  # sigmoid(-4) * max_dur ~ 0.9: one frame per phoneme, so a random model stays fast


def small_config() -> dict:
    config = json.loads((SHARED / "voices" / "kokoro-v1_0-config.json").read_text(encoding="utf-8"))
    config["n_layer"] = 1
    config["plbert"].update(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    config["istftnet"].update(resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                              upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4])
    return config


def samples_per_token(config: dict) -> int:
    """Audio samples per predicted frame: the decoder's 2x upsampling, the generator's, the iSTFT hop."""
    return 2 * math.prod(config["istftnet"]["upsample_rates"]) * config["istftnet"]["gen_istft_hop_size"]


def random_state_dicts(config: dict) -> dict:
    """The submodules exactly as kokoro.model.KModel.__init__ builds them, randomly initialised."""
    from kokoro.istftnet import Decoder
    from kokoro.modules import CustomAlbert, ProsodyPredictor, TextEncoder
    from transformers import AlbertConfig
    torch.manual_seed(0)
    bert = CustomAlbert(AlbertConfig(vocab_size=config["n_token"], **config["plbert"]))
    modules = {
        "bert": bert,
        "bert_encoder": torch.nn.Linear(bert.config.hidden_size, config["hidden_dim"]),
        "predictor": ProsodyPredictor(style_dim=config["style_dim"], d_hid=config["hidden_dim"],
                                      nlayers=config["n_layer"], max_dur=config["max_dur"],
                                      dropout=config["dropout"]),
        "text_encoder": TextEncoder(channels=config["hidden_dim"], kernel_size=config["text_encoder_kernel_size"],
                                    depth=config["n_layer"], n_symbols=config["n_token"]),
        "decoder": Decoder(dim_in=config["hidden_dim"], style_dim=config["style_dim"], dim_out=config["n_mels"],
                           **config["istftnet"]),
    }
    with torch.no_grad():
        modules["predictor"].duration_proj.linear_layer.bias.fill_(DURATION_BIAS)
    return {name: module.state_dict() for name, module in modules.items()}


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """(weights .pth, config .json, config dict, TorchEngine on them); the hub is off limits throughout."""
    import kokoro.model
    folder = tmp_path_factory.mktemp("small-kokoro")
    config = small_config()
    weights, config_path = folder / "kokoro-small.pth", folder / "config.json"
    torch.save(random_state_dicts(config), weights)
    config_path.write_text(json.dumps(config), encoding="utf-8")

    def no_hub(*args, **kwargs):
        raise AssertionError(f"the Hugging Face hub was asked for {args} {kwargs}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kokoro.model, "hf_hub_download", no_hub)
        engine = TorchEngine(device="cpu", model_path=weights, config=config)
        yield weights, config_path, config, engine


@pytest.fixture(scope="module")
def pack():
    return torch.load(VOICES_DIR / "af_sky.pt", weights_only=True).numpy()


def known(engine, phonemes: str) -> str:
    return "".join(ch for ch in phonemes if ch in engine.vocab)


@pytest.mark.slow
def test_the_engine_runs_kmodel_with_our_weights(small_model):
    from kokoro import KModel
    weights, _, config, engine = small_model
    assert engine.name == "kokoro" and engine.device == "cpu"
    assert isinstance(engine.model, KModel) and not engine.model.training
    assert engine.vocab == config["vocab"]
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    for module in ("bert", "predictor", "decoder"):
        loaded = getattr(engine.model, module).state_dict()
        name = next(k for k in saved[module] if k.endswith("weight"))
        torch.testing.assert_close(loaded[name], saved[module][name], rtol=0, atol=0)
    assert (engine.model.predictor.duration_proj.linear_layer.bias == DURATION_BIAS).all()


@pytest.mark.slow
def test_short_sentence_gives_deterministic_float32_audio(small_model, pack, g2p):
    _, _, config, engine = small_model
    phonemes = g2p.get("a")("Hello there, this is a test.")
    n = len(known(engine, phonemes))
    assert 10 < n <= MAX_PHONEMES
    torch.manual_seed(1234)
    first = engine.synthesize(phonemes, pack)
    torch.manual_seed(1234)
    second = engine.synthesize(phonemes, pack)
    assert first.dtype == np.float32 and first.ndim == 1 and np.isfinite(first).all()
    per_token = samples_per_token(config)
    # every token (and the two pads) gets 1..max_dur frames
    assert per_token * (n + 2) <= first.size <= per_token * config["max_dur"] * (n + 2)
    assert first.size % per_token == 0
    np.testing.assert_array_equal(first, second)


@pytest.mark.slow
def test_phonemes_beyond_the_context_are_split(small_model, pack, g2p):
    _, _, config, engine = small_model
    sentence = g2p.get("a")("Thank you for your patience, we will be right with you.")
    phonemes = " ".join([sentence] * (MAX_PHONEMES // len(sentence) + 2))
    phonemes = phonemes[:phonemes.index(" ", MAX_PHONEMES + 10)]  # just over the limit: each phoneme costs a frame
    n = len(known(engine, phonemes))
    assert MAX_PHONEMES < n < MAX_PHONEMES + 60
    pieces = split_phonemes(known(engine, phonemes))
    assert len(pieces) == 2 and all(len(p) <= MAX_PHONEMES for p in pieces)
    torch.manual_seed(0)
    audio = engine.synthesize(phonemes, pack)
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    # both pieces were spoken: at least one frame per phoneme kept (spaces at the cut are dropped)
    assert audio.size >= samples_per_token(config) * (n - 1)


def kmodel_output(engine, phonemes: str, pack: np.ndarray, speed: float, seed: int):
    """The whole model call as the engine's non-streaming path makes it (KPipeline.infer), after ``seed``."""
    from kokoro import KPipeline
    torch.manual_seed(seed)
    with torch.inference_mode():
        return KPipeline.infer(engine.model, phonemes, torch.from_numpy(pack), speed)


def relative_rms(audio: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((audio - reference) ** 2) / np.mean(reference ** 2)))


@pytest.mark.slow
def test_the_small_model_streams(small_model):
    _, _, config, engine = small_model
    assert engine.streams
    assert engine.frame_samples == samples_per_token(config)


@pytest.mark.slow
def test_one_window_is_kmodels_own_audio(small_model, pack, g2p):
    """With the same seed, the sine source draws the same random numbers in prepare as inside KModel.

    Nothing before the generator draws any (the model is in eval mode), and the source is made
    once for the whole model call in both paths, so a window covering the whole call is KModel's
    audio bit for bit.
    """
    _, _, _, engine = small_model
    phonemes = known(engine, g2p.get("a")("Hello there, this is a test."))
    torch.manual_seed(7)
    [window] = engine.prepare(phonemes, pack, 1.0, WHOLE)
    audio = engine.render(window)
    output = kmodel_output(engine, phonemes, pack, 1.0, seed=7)
    frames = int(output.pred_dur.sum())
    # one frame per token: the pads are shorter than the silence kept, so nothing is cut
    assert speech_span(phonemes, output.pred_dur.numpy()) == (0, frames) == (0, window.utterance.frames)
    assert audio.dtype == np.float32 and audio.size == frames * engine.frame_samples
    np.testing.assert_array_equal(audio, output.audio.numpy())


@pytest.mark.slow
def test_prepare_cuts_kmodels_own_features_to_the_speech(small_model, pack, g2p):
    """Slow speech has boundary silence to cut: the prepared features are exactly KModel's, and the spoken
    span marks what is cut.

    The audio cannot be bit-exact: the generator's instance norms normalise over the frames they
    are given, and the cut silence no longer counts. Measured correlation with KModel's audio
    over the same frames: 0.989.
    """
    _, _, config, engine = small_model
    phonemes = known(engine, g2p.get("a")("Hello there, this is a test."))
    speed, fs = 0.25, engine.frame_samples
    torch.manual_seed(7)
    [window] = engine.prepare(phonemes, pack, speed, WHOLE)
    audio = engine.render(window)
    generator, seen = engine.model.decoder.generator, {}
    hooks = [generator.register_forward_pre_hook(lambda module, args: seen.update(features=args[0])),
             generator.m_source.register_forward_hook(lambda module, args, out: seen.update(source=out[0]))]
    try:
        output = kmodel_output(engine, phonemes, pack, speed, seed=7)
    finally:
        for hook in hooks:
            hook.remove()
    start, stop = speech_span(phonemes, output.pred_dur.numpy())
    assert 0 < start and stop < int(output.pred_dur.sum())
    assert (window.utterance.offset, window.utterance.frames) == (start, stop - start)
    assert audio.size == (stop - start) * fs
    features, source, _ = window.utterance.features
    torch.testing.assert_close(features, seen["features"], rtol=0, atol=0)
    spec, phase = generator.stft.transform(seen["source"].transpose(1, 2).squeeze(1))
    torch.testing.assert_close(source, torch.cat([spec, phase], dim=1), rtol=0, atol=0)
    assert np.corrcoef(audio, output.audio.numpy()[start * fs: stop * fs])[0, 1] > 0.95


@pytest.mark.slow
def test_windows_match_the_whole_utterance(small_model, pack, g2p):
    """Windows of a prepared sentence against the same sentence rendered as one window.

    The small model makes 40 samples a frame, so the 240-sample crossfade spans 6 frames: windows
    are 8 frames, with at least 3 (half a crossfade) of context. The generator's instance norms
    see only a window and its context, so windows are not bit-exact, and their error shrinks as
    the context grows. Measured on this sentence (50 frames, six windows): relative RMS error
    0.29 with 4 frames of context, 0.17 with 12 (correlation 0.985); the error within half a
    crossfade of a seam is 0.86x (12 frames) to 1.04x (4) the error elsewhere, and the largest
    sample step there is 1.04x the whole rendering's largest (random weights make noise).
    """
    _, _, _, engine = small_model
    phonemes = known(engine, g2p.get("a")("Thank you for your patience, we will be right with you."))
    torch.manual_seed(3)
    [whole_window] = engine.prepare(phonemes, pack, 1.0, WHOLE)
    whole = engine.render(whole_window)

    def windowed(context_frames: int) -> tuple[list, np.ndarray]:
        torch.manual_seed(3)    # the same source as the whole rendering
        plan = WindowPlan(first_frames=8, growth=1.0, context_frames=context_frames, min_last_frames=4)
        windows = engine.prepare(phonemes, pack, 1.0, plan)
        for a, b in zip(windows[0].utterance.features, whole_window.utterance.features):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        return windows, np.concatenate([engine.render(window) for window in windows])

    windows, audio = windowed(12)
    assert len(windows) >= 5 and audio.dtype == np.float32 and audio.size == whole.size
    error = relative_rms(audio, whole)
    assert error < 0.25 and np.corrcoef(audio, whole)[0, 1] > 0.95
    assert error < 0.8 * relative_rms(windowed(4)[1], whole)

    near_seam = np.zeros(whole.size, dtype=bool)
    for window in windows[1:]:
        seam = window.start * engine.frame_samples
        near_seam[seam - CROSSFADE_SAMPLES // 2: seam + CROSSFADE_SAMPLES // 2] = True
    assert relative_rms(audio[near_seam], whole[near_seam]) < 1.5 * relative_rms(audio[~near_seam], whole[~near_seam])
    assert np.abs(np.diff(audio))[near_seam[1:]].max() < 1.25 * np.abs(np.diff(whole)).max()


@pytest.mark.slow
def test_a_decoder_of_another_structure_runs_whole(small_model, pack, g2p, caplog):
    """A generator kokoro did not build cannot be cut: the engine says so and speaks through KPipeline.infer."""
    _, _, _, engine = small_model
    decoder = engine.model.decoder
    generator = decoder.generator

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = generator

        def forward(self, *args):
            return self.inner(*args)

    phonemes = known(engine, g2p.get("a")("Goodbye now."))
    caplog.set_level(logging.WARNING, logger="kokoro_daemon.engines")
    try:
        decoder.generator = Wrapped()
        engine._set_up_streaming()
        assert not engine.streams
        assert "kokoro cannot be run in windows" in caplog.text
        torch.manual_seed(5)
        audio = engine.synthesize(phonemes, pack)
        np.testing.assert_array_equal(audio, kmodel_output(engine, phonemes, pack, 1.0, seed=5).audio.numpy())
    finally:
        decoder.generator = generator
        engine._set_up_streaming()
    assert engine.streams


@pytest.mark.slow
def test_service_on_the_kokoro_engine(small_model, g2p):
    _, _, _, engine = small_model
    config = ServiceConfig(voice="af_sky", host="127.0.0.1", tcp_port=0, udp_port=0, device="cpu",
                           engine="kokoro", voices_dir=str(VOICES_DIR))
    service = KokoroService(config, engine=engine, g2p=g2p)
    try:
        service.start()
        assert service.engine is engine
        with LlamaClient(service.tcp_address, "5101") as client:
            client.text("Hello there. Goodbye now.")
            client.bye()
            frames = client.read_until_bye()
    finally:
        service.stop()
    assert [f.chunk_id for f in frames] == [1, 2]
    for frame in frames:
        assert frame.rate == 24000 and frame.samples.size > 0 and np.isfinite(frame.samples).all()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kokoro", "auto"])
def test_create_engine_picks_the_torch_engine_for_local_weights(small_model, kind, caplog):
    weights, config_path, config, _ = small_model
    caplog.set_level(logging.INFO, logger="kokoro_daemon.engines")
    engine = create_engine(kind, device="cpu", model=str(weights), model_config=str(config_path))
    assert isinstance(engine, TorchEngine) and engine.device == "cpu"
    assert engine.vocab == config["vocab"]
    assert (engine.model.predictor.duration_proj.linear_layer.bias == DURATION_BIAS).all()
    if kind == "auto":
        assert "engine auto-selected: kokoro" in caplog.text


def test_auto_choice_without_torch_weights():
    assert _auto_choice("cpu", "/models/kokoro.onnx")[0] == "onnx"
    assert _auto_choice("cpu", "/models/kokoro.pth")[0] == "kokoro"
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert _auto_choice("mps", None)[0] == "onnx"
    with pytest.raises(ValueError, match="engine must be one of"):
        create_engine("tensorflow", device="cpu")


def test_missing_device_falls_back_with_a_warning(caplog):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    caplog.set_level(logging.WARNING, logger="kokoro_daemon.engines.torch_engine")
    assert resolve_device("mps") == expected
    assert f"device 'mps' is not available here; using '{expected}'" in caplog.text
    caplog.clear()
    assert resolve_device("cpu") == "cpu"
    assert not caplog.records
