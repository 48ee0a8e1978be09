"""Audio for the HTTP API, encoded one segment at a time, so the first bytes leave before the last words are spoken.

| format | what is sent | how it streams |
| --- | --- | --- |
| ``pcm`` | 16-bit little-endian 24 kHz mono, no header (as OpenAI's ``pcm``) | each segment on its own |
| ``wav`` | a 16-bit PCM WAV header whose RIFF and data sizes say "unknown" (0xFFFFFFFF, as OpenAI's streamed WAV), then ``pcm`` | header first |
| ``mulaw`` | G.711 mu-law at 8 kHz, no header (``audio/basic``), resampled with soxr like the phone path (one filter across the segments) | each segment on its own |
| ``mp3`` | MPEG-2 layer III, constant 64 kbit/s (LAME in libsndfile) | frames as they are encoded |
| ``opus`` | Opus in Ogg (libsndfile) | pages as they fill |
| ``flac`` | FLAC, 16 bit (libFLAC in libsndfile) | encoded segment by segment, sent whole at the end |

libsndfile writes its containers into a sink whose bytes are taken as they are written. At
close it seeks back to fill in totals. MP3's info frame is already sent by then, so it stays
blank: at a constant bit rate a decoder counts the length from the frames. FLAC's header must
hold the total sample count (libsndfile, and so soundfile, cannot read a FLAC stream without
it), so FLAC is held until the header is complete; ``pcm`` and ``wav`` stream losslessly.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import soundfile

from .calls import Resampler

UNKNOWN_SIZE = 0xFFFFFFFF
MP3_64_KBPS = 0.63   # libsndfile's compression level: 160 - 0.63 * 152 kbit/s at 24 kHz (MPEG-2)


@dataclass(frozen=True)
class AudioFormat:
    name: str
    media_type: str
    sample_rate: int | None = None            # None: the engine's rate
    container: tuple[str, str] | None = None  # libsndfile (format, subtype) for the container formats
    streams: bool = True                      # False: sent whole once encoded (see the module doc)


FORMATS = {f.name: f for f in (
    AudioFormat("mp3", "audio/mpeg", container=("MP3", "MPEG_LAYER_III")),
    AudioFormat("opus", "audio/ogg; codecs=opus", container=("OGG", "OPUS")),
    AudioFormat("flac", "audio/flac", container=("FLAC", "PCM_16"), streams=False),
    AudioFormat("wav", "audio/wav"),
    AudioFormat("pcm", "audio/pcm"),
    AudioFormat("mulaw", "audio/basic", sample_rate=8000),
)}


def wav_header(sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV header for a stream of unknown length."""
    block_align = 2
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", UNKNOWN_SIZE, b"WAVE", b"fmt ", 16, 1, 1, sample_rate,
                       sample_rate * block_align, block_align, 16, b"data", UNKNOWN_SIZE)


class _StreamSink(io.RawIOBase):
    """A file for libsndfile whose bytes are taken as they are written; bytes already taken cannot change."""

    def __init__(self):
        super().__init__()
        self._unsent = bytearray()
        self._sent = 0
        self._pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        size = len(data)
        start = self._pos - self._sent
        if start < 0:
            data, start = data[-start:], 0
        self._unsent[start:start + len(data)] = data
        self._pos += size
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._sent + len(self._unsent)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        data = bytes(self._unsent)
        self._sent += len(data)
        self._unsent.clear()
        return data


class StreamEncoder:
    """Float32 mono segments in, encoded bytes out; ``finish`` returns what the encoder still holds."""

    def __init__(self, fmt: AudioFormat, input_rate: int):
        self.format = fmt
        self.input_rate = input_rate
        self.rate = fmt.sample_rate or input_rate
        self._pending = wav_header(self.rate) if fmt.name == "wav" else b""
        self._resample = Resampler(self.rate)
        self._sink: _StreamSink | None = None
        self._file: soundfile.SoundFile | None = None
        if fmt.container:
            major, subtype = fmt.container
            mp3 = major == "MP3"
            self._sink = _StreamSink()
            self._file = soundfile.SoundFile(self._sink, "w", samplerate=self.rate, channels=1, format=major,
                                             subtype=subtype, compression_level=MP3_64_KBPS if mp3 else None,
                                             bitrate_mode="CONSTANT" if mp3 else None)

    def encode(self, audio: np.ndarray, last: bool = False) -> bytes:
        samples = np.clip(self._resample(audio, self.input_rate, last=last), -1.0, 1.0)
        head, self._pending = self._pending, b""
        if self._file is not None:
            self._file.write(samples)
            return head + (self._sink.take() if self.format.streams else b"")
        raw = io.BytesIO()
        soundfile.write(raw, samples, self.rate, format="RAW", endian="LITTLE",
                        subtype="ULAW" if self.format.name == "mulaw" else "PCM_16")
        return head + raw.getvalue()

    def finish(self) -> bytes:
        head = self.encode(np.zeros(0, dtype=np.float32), last=True) if self.rate != self.input_rate else b""
        head, self._pending = head + self._pending, b""
        if self._file is None:
            return head
        self._file.close()
        return head + self._sink.take()
