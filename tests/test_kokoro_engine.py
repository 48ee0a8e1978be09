"""The kokoro (torch) engine's own code path, KModel driven by KPipeline.infer, with no hub access.

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
