"""The OpenAI-compatible HTTP API, through the official ``openai`` client, against the real service and model."""
from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import soundfile

from conftest import judge, running_service, write_wav
from kokoro_daemon import metrics
from kokoro_daemon.http_api import MAX_INPUT_CHARS
from peers import LlamaClient, checked_audio

HEARD = "Thank you for calling the clinic. Your appointment is confirmed for Tuesday morning."
# Four sentences of similar length: the first is spoken long before the last is synthesized.
STREAMED = ("The river runs past the old mill every spring. Birds gather on the roof before the rain comes. "
            "Children walk along the bank to the wooden bridge. Evening falls slowly over the quiet valley.")
# more than two joined model calls after the first (MERGE_MAX_CHARS each), so some is still queued when a client goes
LONG = STREAMED + (" A farmer mends the fence beside the orchard gate. The bell in the tower rings twice at noon."
                   " Lanterns glow in the windows of the inn. A cart rolls slowly down the hill toward the market."
                   " Fishermen pull their boats onto the shingle at dusk. The baker lights his oven before dawn."
                   " Snow settles softly on the pine trees above the lake. The ferry crosses to the island twice"
                   " a day.")
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def http_service(engine, g2p):
    with running_service(engine, g2p, http_port=0) as service:
        yield service


def base_url(service) -> str:
    return "http://%s:%d" % service.http.address


@pytest.fixture(scope="module")
def client(http_service):
    return openai.OpenAI(base_url=base_url(http_service) + "/v1", api_key="unused", max_retries=0)


def decode(fmt: str, data: bytes) -> tuple[np.ndarray, int]:
    """What a client of each format would do with the bytes."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, 24000
    if fmt == "mulaw":
        return soundfile.read(io.BytesIO(data), format="RAW", subtype="ULAW", samplerate=8000, channels=1,
                              dtype="float32")
    return soundfile.read(io.BytesIO(data), dtype="float32")


def error_of(exc: openai.APIStatusError) -> dict:
    """The error object, after checking the body has exactly OpenAI's shape."""
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    return body["error"]


def get(service, path: str, key: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(base_url(service) + path)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.judge
def test_every_format_decodes_to_the_speech_and_is_heard(client, tmp_path):
    audio = {}
    for fmt in ("pcm", "wav", "flac", "mp3", "opus", "mulaw"):
        reply = client.audio.speech.create(model="tts-1", voice="af_sky", input=HEARD, response_format=fmt)
        audio[fmt] = decode(fmt, reply.content)
    reference, _ = audio["pcm"]
    seconds = reference.size / 24000
    assert 3.0 < seconds < 9.0 and np.abs(reference).max() > 0.05, seconds  # 14 words at a speaking pace
    for fmt in ("wav", "flac"):   # lossless: the same samples
        np.testing.assert_allclose(audio[fmt][0], reference, atol=1 / 32768)
    assert audio["mulaw"][1] == 8000 and abs(audio["mulaw"][0].size - reference.size / 3) <= 1
    for fmt in ("mp3", "opus"):   # lossy: the codec's delay and padding, at most a few frames
        samples, rate = audio[fmt]
        assert rate == 24000 and 0 <= samples.size / rate - seconds < 0.15, (fmt, samples.size / rate, seconds)
    heard = judge(tmp_path, [(write_wav(tmp_path / f"{fmt}.wav", *audio[fmt]), HEARD)
                             for fmt in ("wav", "mp3", "opus", "mulaw")])
    assert all(row["wer"] <= 0.05 for row in heard["files"]), heard


@pytest.mark.slow
def test_first_audio_streams_before_the_whole_input_is_synthesized(client):
    """STREAMED in am_adam is spoken here first, so no segment comes from the cache."""
    started = time.monotonic()
    arrivals = []
    with client.audio.speech.with_streaming_response.create(model="kokoro", voice="am_adam", input=STREAMED,
                                                            response_format="pcm") as response:
        assert response.headers["content-type"] == "audio/pcm"
        for chunk in response.iter_bytes():
            arrivals.append((time.monotonic() - started, len(chunk)))
    first_s, total_s = arrivals[0][0], arrivals[-1][0]
    print(f"\nfirst bytes after {first_s:.2f} s, last after {total_s:.2f} s")
    assert first_s < 0.6 * total_s, arrivals
    assert sum(size for _, size in arrivals) / 2 / 24000 > 8.0   # all four sentences came


@pytest.mark.slow
def test_a_client_that_goes_away_costs_no_more_engine_time(http_service, client, caplog):
    caplog.set_level(logging.INFO, logger="kokoro_daemon.http_api")
    cancelled = metrics.SEGMENTS_CANCELLED._value.get()  # noqa: SLF001
    with client.audio.speech.with_streaming_response.create(model="kokoro", voice="bf_emma", input=LONG,
                                                            response_format="mp3") as response:
        next(response.iter_bytes())
    deadline = time.monotonic() + 30
    while "the client went away" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "the client went away" in caplog.text
    assert metrics.SEGMENTS_CANCELLED._value.get() > cancelled  # noqa: SLF001
    after = client.audio.speech.create(model="kokoro", voice="af_sky", input="Still here.", response_format="wav")
    assert decode("wav", after.content)[0].size > 12000


@pytest.mark.slow
def test_a_call_and_a_request_each_speak_in_their_own_voice(http_service, client):
    call_text, request_text = "Your order has shipped and will arrive on Friday.", "The gate code is on the way."
    results = {}

    def request():
        results["http"] = client.audio.speech.create(model="kokoro", voice="am_michael", input=request_text,
                                                     response_format="pcm").content

    thread = threading.Thread(target=request)
    with LlamaClient(http_service.tcp_address, "5201") as call:
        thread.start()
        call.text(call_text)
        call.bye()
        heard = checked_audio(call.read_until_bye())
    thread.join(120)
    voice, speed = http_service.voice_setting.get()
    assert voice.spec == "af_sky"
    expected, _ = http_service.synthesizer.speak(call_text, voice, speed)
    assert heard.shape == expected.shape and np.allclose(heard, expected, atol=1e-3)
    expected, _ = http_service.synthesizer.speak(request_text, http_service.load_voice("am_michael"), 1.0)
    spoken = decode("pcm", results["http"])[0]
    assert spoken.shape == expected.shape and np.allclose(spoken, np.clip(expected, -1, 1), atol=2 / 32768)


@pytest.mark.parametrize("arguments, status, param, code", [
    ({"voice": "af_nobody"}, 400, "voice", "invalid_value"),
    ({"voice": "af_sky(-1)"}, 400, "voice", "invalid_value"),
    ({"input": ""}, 400, "input", "empty_string"),
    ({"input": "x" * (MAX_INPUT_CHARS + 1)}, 400, "input", "string_above_max_length"),
    ({"response_format": "aac"}, 400, "response_format", "invalid_value"),
    ({"speed": 3.0}, 400, "speed", "invalid_value"),
    ({"speed": 0.25}, 400, "speed", "invalid_value"),
    ({"model": "whisper-1"}, 404, None, "model_not_found"),
])
@pytest.mark.slow
def test_bad_requests_get_openai_errors(client, arguments, status, param, code):
    request = {"model": "kokoro", "voice": "af_sky", "input": "Hello.", **arguments}
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.speech.create(**request)
    assert info.value.status_code == status
    error = error_of(info.value)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code), error
    assert error["message"]


@pytest.mark.parametrize("body, param", [(b"{not json", None), (b'{"model": "kokoro", "voice": "af_sky"}', "input"),
                                         (b'{"model": "kokoro", "voice": "af_sky", "input": 5}', "input")])
def test_malformed_bodies_get_openai_errors(http_service, body, param):
    request = urllib.request.Request(base_url(http_service) + "/v1/audio/speech", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400
    error = json.loads(info.value.read())["error"]
    assert set(error) == ERROR_KEYS and error["param"] == param, error


@pytest.mark.slow
def test_unknown_routes_get_openai_errors(http_service):
    status, body = get(http_service, "/v1/audio/transcriptions")
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url"


@pytest.mark.slow
def test_models_voices_health_and_metrics(http_service, client):
    assert {"kokoro", "tts-1"} <= {model.id for model in client.models.list()}
    status, body = get(http_service, "/v1/audio/voices")
    voices = {voice["id"]: voice for voice in json.loads(body)["voices"]}
    assert status == 200
    assert voices["af_sky"]["language"] == "American English" and voices["bm_george"]["language"] == "British English"
    assert voices["am_adam"]["gender"] == "male"
    # the kind of source, never a path on the server: the service's voices folder holds every English pack
    assert voices["af_sky"]["source"] == "directory"
    assert {voice["source"] for voice in voices.values()} <= {"shipped", "directory", "hub", "embedded"}
    status, body = get(http_service, "/health")
    health = json.loads(body)
    assert status == 200 and health["ready"] is True
    assert (health["engine"], health["device"], health["voice"]) == ("onnx (int8 graph)", "cpu", "af_sky")
    status, body = get(http_service, "/metrics")
    assert status == 200 and b"kokoro_http_speech_total" in body and b"kokoro_frames_sent_total" in body


@pytest.mark.slow
def test_api_key_guards_every_route_but_health(engine, g2p):
    with running_service(engine, g2p, http_port=0, api_key="s3cret") as service:
        assert get(service, "/health")[0] == 200
        for path in ("/v1/models", "/v1/audio/voices", "/metrics", "/api/status"):
            assert get(service, path)[0] == 401, path
            assert get(service, path, key="wrong")[0] == 401, path
            assert get(service, path, key="s3cret")[0] == 200, path
        keyless = openai.OpenAI(base_url=base_url(service) + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            keyless.audio.speech.create(model="kokoro", voice="af_sky", input="Hello.")
        assert error_of(info.value)["code"] == "invalid_api_key"
        keyed = openai.OpenAI(base_url=base_url(service) + "/v1", api_key="s3cret", max_retries=0)
        spoken = keyed.audio.speech.create(model="kokoro", voice="af_sky(2)+af_bella(1)", input="Hello.",
                                           response_format="wav")
        assert decode("wav", spoken.content)[0].size > 6000
