"""Kokoro-82M through the kokoro package (KModel) on torch.

The model streams as the ONNX engine does (windows.py): the front end and the decoder up to its
generator run once per sentence, with the generator's harmonic source, and the generator renders
each window from its slice of them. A decoder that is not kokoro's, or that fails the check at
load, runs whole through KPipeline's inference step, with a log line saying why.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from . import Engine

log = logging.getLogger(__name__)

HUB_REPO = "hexgrad/Kokoro-82M"
DEVICE_PREFERENCE = ("mps", "cuda", "cpu")


def resolve_device(requested: str) -> str:
    """The asked device if present, else the next of mps -> cuda -> cpu that is, with one log line."""
    import torch
    present = {"mps": torch.backends.mps.is_available(), "cuda": torch.cuda.is_available(), "cpu": True}
    if present.get(requested):
        return requested
    fallback = next(d for d in DEVICE_PREFERENCE[DEVICE_PREFERENCE.index(requested) if requested in DEVICE_PREFERENCE else 0:]
                    if present[d])
    log.warning("device %r is not available here; using %r", requested, fallback)
    return fallback


def local_weights() -> tuple[Path, Path] | None:
    """(weights, config) already in the Hugging Face cache, found without the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    from kokoro import KModel
    weights = try_to_load_from_cache(HUB_REPO, KModel.MODEL_NAMES[HUB_REPO])
    config = try_to_load_from_cache(HUB_REPO, "config.json")
    if isinstance(weights, str) and isinstance(config, str):
        return Path(weights), Path(config)
    return None


class TorchEngine(Engine):
    name = "kokoro"

    def __init__(self, device: str = "cpu", model_path: str | Path | None = None,
                 config: str | Path | dict | None = None):
        import torch
        from kokoro import KModel, KPipeline
        if model_path is None and config is None and (cached := local_weights()):
            model_path, config = cached
        if isinstance(config, (str, Path)):
            config = json.loads(Path(config).read_text(encoding="utf-8"))
        self.device = device
        self._torch = torch
        self._infer_step = KPipeline.infer
        self.model = KModel(repo_id=HUB_REPO, config=config, model=str(model_path) if model_path else None)
        self.model = self.model.to(device).eval()
        super().__init__(self.model.vocab)
        self._packs: dict[int, tuple] = {}
        self._set_up_streaming()

    def _pack_tensor(self, pack: np.ndarray):
        """Voice packs stay numpy service-wide; each is moved to the device once."""
        cached = self._packs.get(id(pack))
        if cached is None or cached[0] is not pack:
            if len(self._packs) >= 32:
                self._packs.clear()
            cached = self._packs[id(pack)] = (pack, self._torch.from_numpy(pack).to(self.device))
        return cached[1]

    def _infer(self, phonemes: str, pack: np.ndarray, speed: float) -> np.ndarray:
        with self._torch.inference_mode():
            output = self._infer_step(self.model, phonemes, self._pack_tensor(pack), speed)
        return output.audio.detach().float().cpu().numpy().reshape(-1)

    def _features(self, phonemes: str, pack: np.ndarray, speed: float) -> tuple:
        """KModel.forward_with_tokens up to its generator, and the generator's harmonic source (its sine
        source draws random numbers: made once here, every window of the sentence slices the same)."""
        with self._torch.inference_mode():
            ref_s = self._pack_tensor(pack)[len(phonemes) - 1]     # the style KPipeline.infer picks
            durations, features, source, style = self._forward_features(phonemes, ref_s, speed)
        return durations.cpu().numpy(), features, source, style

    def _forward_features(self, phonemes: str, ref_s, speed: float) -> tuple:
        torch, model = self._torch, self.model
        tokens = torch.tensor([[0, *(self.vocab[ch] for ch in phonemes), 0]], device=self.device)
        lengths = torch.full((1,), tokens.shape[-1], device=self.device, dtype=torch.long)
        text_mask = torch.zeros_like(tokens, dtype=torch.bool)      # one sequence, nothing padded
        bert_dur = model.bert(tokens, attention_mask=(~text_mask).int())
        d_en = model.bert_encoder(bert_dur).transpose(-1, -2)
        s = ref_s[:, 128:]
        d = model.predictor.text_encoder(d_en, s, lengths, text_mask)
        x, _ = model.predictor.lstm(d)
        duration = torch.sigmoid(model.predictor.duration_proj(x)).sum(axis=-1) / speed
        durations = torch.round(duration).clamp(min=1).long().squeeze()
        indices = torch.repeat_interleave(torch.arange(tokens.shape[1], device=self.device), durations)
        alignment = torch.zeros((tokens.shape[1], indices.shape[0]), device=self.device)
        alignment[indices, torch.arange(indices.shape[0])] = 1
        alignment = alignment.unsqueeze(0)
        F0_curve, N = model.predictor.F0Ntrain(d.transpose(-1, -2) @ alignment, s)
        asr = model.text_encoder(tokens, lengths, text_mask) @ alignment
        style = ref_s[:, :128]
        return durations, self._decoder_body(asr, F0_curve, N, style), self._harmonic_source(F0_curve), style

    def _decoder_body(self, asr, F0_curve, N, s):
        """Decoder.forward without its last step, the generator: the input the generator's windows slice."""
        decoder, torch = self.model.decoder, self._torch
        F0 = decoder.F0_conv(F0_curve.unsqueeze(1))
        N = decoder.N_conv(N.unsqueeze(1))
        x = decoder.encode(torch.cat([asr, F0, N], axis=1), s)
        asr_res = decoder.asr_res(asr)
        res = True
        for block in decoder.decode:
            if res:
                x = torch.cat([x, asr_res, F0, N], axis=1)
            x = block(x, s)
            if block.upsample_type != "none":
                res = False
        return x

    def _harmonic_source(self, F0_curve):
        """The start of Generator.forward: the sine source's spectrum and phase, one step per hop."""
        generator = self.model.decoder.generator
        f0 = generator.f0_upsamp(F0_curve[:, None]).transpose(1, 2)
        har_source, _, _ = generator.m_source(f0)
        har_spec, har_phase = generator.stft.transform(har_source.transpose(1, 2).squeeze(1))
        return self._torch.cat([har_spec, har_phase], dim=1)

    def _run_generator(self, x, har, s) -> np.ndarray:
        """The rest of Generator.forward, on a given harmonic source.

        kokoro's forward makes the source itself from F0, for the span it is given; a window must
        use its slice of the whole sentence's source instead.
        """
        with self._torch.inference_mode():
            return self._generator_forward(x, har, s).float().cpu().numpy().reshape(-1)

    def _generator_forward(self, x, har, s):
        generator, F = self.model.decoder.generator, self._torch.nn.functional
        kernels = generator.num_kernels
        for i in range(generator.num_upsamples):
            x = F.leaky_relu(x, negative_slope=0.1)
            x_source = generator.noise_res[i](generator.noise_convs[i](har), s)
            x = generator.ups[i](x)
            if i == generator.num_upsamples - 1:
                x = generator.reflection_pad(x)
            x = x + x_source
            x = sum(generator.resblocks[i * kernels + j](x, s) for j in range(kernels)) / kernels
        x = generator.conv_post(F.leaky_relu(x))
        spec = self._torch.exp(x[:, :generator.post_n_fft // 2 + 1, :])
        phase = self._torch.sin(x[:, generator.post_n_fft // 2 + 1:, :])
        return generator.stft.inverse(spec, phase)
