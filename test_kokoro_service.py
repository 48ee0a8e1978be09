#!/usr/bin/env python3
"""Smoke test against a running Kokoro service, as the Piper service's check did.

Connects, sends HELLO (call_id 999), one sentence, reads one full audio frame, sends BYE.
Exits non-zero on any failure. ``--wav`` also keeps reading until the service's BYE and
writes every frame's audio to a WAV file, to listen to or score.
"""
import argparse
import os
import socket
import struct
import sys

DEFAULT_TEXT = "Hello, this is a test of the Kokoro text to speech service."


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"service closed the connection ({len(data)} of {size} bytes read)")
        data += chunk
    return data


def send_message(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def read_frame(sock: socket.socket):
    """(sample_rate, chunk_id, float32 payload) or None at the service's BYE."""
    head = recv_exact(sock, 4)
    if head == b"\xff\xff\xff\xff":
        return None
    size = struct.unpack(">I", head)[0]
    rate, chunk_id = struct.unpack(">II", recv_exact(sock, 8))
    return rate, chunk_id, recv_exact(sock, size)


def write_wav(path: str, rate: int, payload: bytes) -> None:
    import wave
    from array import array
    samples = array("f")
    samples.frombytes(payload)
    if sys.byteorder == "big":
        samples.byteswap()
    pcm = array("h", (max(-32768, min(32767, int(s * 32767))) for s in samples))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("KOKORO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("KOKORO_TCP_PORT", "8090")))
    parser.add_argument("--call-id", default="999")
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--wav", help="write all the reply's audio to this WAV file")
    args = parser.parse_args()
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            print(f"Connected to Kokoro service at {args.host}:{args.port}")
            send_message(sock, args.call_id.encode())
            print(f"Sent HELLO with call_id {args.call_id}")
            send_message(sock, args.text.encode("utf-8"))
            print(f"Sent text: {args.text}")
            frame = read_frame(sock)
            if frame is None:
                raise ConnectionError("service sent BYE before any audio")
            rate, chunk_id, payload = frame
            print(f"Received {len(payload)} bytes of audio data (chunk {chunk_id}, {rate} Hz, "
                  f"{len(payload) / 4 / rate:.2f} s)")
            if not payload:
                raise ValueError("the audio frame is empty")
            sock.sendall(b"\xff\xff\xff\xff")
            print("Sent BYE")
            if args.wav:
                audio = [payload]
                while (frame := read_frame(sock)) is not None:
                    audio.append(frame[2])
                write_wav(args.wav, rate, b"".join(audio))
                print(f"Wrote {args.wav}")
    except (OSError, ConnectionError, ValueError) as exc:
        print(f"Test failed: {exc}", file=sys.stderr)
        return 1
    print("Test completed successfully")
    return 0


if __name__ == "__main__":
    sys.exit(main())
