"""A hostile client against real servers: every input is bounded before work is done on it.

Real ``modelloop serve`` processes on loopback over tiny trained projects, real files (PNG,
JPEG, WAV, FLAC), raw sockets for chunked bodies, the real ``modelloop init``. Each repro of the
hostile-client review is a test here: a 17 KB PNG that decodes to gigabytes, a decompression
bomb, NaN and Infinity in JSON, numbers that are strings or booleans, oversized chunked bodies.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml
from PIL import Image

from modelloop.data.image import ImageFormat, decode_image, parse_pixels
from modelloop.errors import InputError, SpecError
from modelloop.feedback import FeedbackStore
from modelloop.spec import parse_spec
from tests.conftest import Server, cli

pytestmark = pytest.mark.slow

GRAY8 = ImageFormat(1, 8, 8)


# -- helpers ---------------------------------------------------------------------------------
def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _palette_png(w: int, h: int) -> bytes:
    """The review's repro: a two-colour palette PNG, a few KB on the wire, w*h pixels decoded."""
    img = Image.new("P", (w, h))
    img.putpalette([0, 0, 0, 255, 255, 255])
    return _png(img, optimize=True)


def _gradient(w: int, h: int, mode: str) -> Image.Image:
    """A smooth image (small as PNG or JPEG) of w*h pixels."""
    x = np.linspace(0, 255, w, dtype=np.float32)
    y = np.linspace(0, 255, h, dtype=np.float32)
    a = ((x[None, :] + y[:, None]) / 2).astype(np.uint8)
    bands = {"L": [a], "RGB": [a, a[::-1], 255 - a], "RGBA": [a, a[::-1], 255 - a, a]}[mode]
    return Image.fromarray(np.stack(bands, -1) if len(bands) > 1 else a, mode)


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _health_while(server: Server, request) -> tuple[httpx.Response, list[float]]:
    """Run ``request()`` in a thread and poll /health meanwhile (each call with a 2 s timeout):
    the request's response and every /health latency in seconds."""
    latencies: list[float] = []
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=server.url, timeout=2) as probe:
        fut = pool.submit(request)
        time.sleep(0.02)
        while True:
            t0 = time.perf_counter()
            r = probe.get("/health")
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200
            if fut.done() and len(latencies) >= 3:
                break
            time.sleep(0.05)
        return fut.result(), latencies


def _raw_post(server: Server, path: str, headers: dict[str, str], total: int | None, body: bytes = b"",
              chunk: int = 64 * 1024) -> tuple[int, dict]:
    """POST over a raw socket: ``body`` with Content-Length, or (``total`` bytes) chunked with no
    Content-Length, sent from a thread while the response is read, so a server that answers
    before the whole body arrived is heard. Returns (status, JSON body)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    lines.append("Transfer-Encoding: chunked" if total is not None else f"Content-Length: {len(body)}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send_body() -> None:
        try:
            if total is None:
                sock.sendall(body)
                return
            piece = b"[" + b"1," * (chunk // 2 - 1) + b"1"  # JSON-looking, never finished
            sent = 0
            while sent < total:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: what the test wants to see
            pass

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    data = b""
    try:
        while True:  # until the server closes (Connection: close)
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
    finally:
        sock.close()
        sender.join(timeout=30)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head, "no response"
    return int(head.split(b" ", 2)[1]), json.loads(rest or b"{}")


def _counts(project: Path) -> dict:
    store = FeedbackStore(f"sqlite:///{project / 'feedback.db'}")
    try:
        c = store.counts()
        return {"predictions": c["predictions"], "feedback": c["feedback"]}
    finally:
        store.close()


# -- servers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def projects(tmp_path_factory, tiny_project):
    root = tmp_path_factory.mktemp("hostile")
    return {"image": tiny_project("image-classification", root / "image", max_files=4),
            "text": tiny_project("text-classification", root / "text", max_text_chars=500),
            "tabular": tiny_project("tabular-classification", root / "tabular", max_row_fields=50),
            "audio": tiny_project("audio-classification", root / "audio", max_audio_seconds=5.0,
                                  max_audio_sample_rate=48_000)}


@pytest.fixture(scope="module")
def image_server(projects):
    server = Server(projects["image"])
    yield server
    server.stop()


# -- images ------------------------------------------------------------------------------------
def test_a_tiny_png_of_144_megapixels_is_refused_from_its_header_while_health_answers(image_server):
    """The review's repro: 3 x a 17 KB palette PNG of 12000x12000 in one request blocked /health
    for 16 s and took the server from 725 to 2,510 MB. Now: refused before decoding."""
    s = image_server
    bomb = _palette_png(12000, 12000)
    assert len(bomb) < 30_000
    before = _counts(s.project)
    rss0 = _peak_rss_mb(s.proc.pid)
    files = [("file", (f"b{i}.png", bomb, "image/png")) for i in range(3)]
    r, health = _health_while(s, lambda: httpx.post(f"{s.url}/predict", files=files, timeout=60))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "'b0.png'" in detail and "12000×12000" in detail and "144 megapixels" in detail
    assert "at most 40 megapixels" in detail and "serving.max_image_pixels" in detail
    assert max(health) < 2  # every /health answered within its 2 s timeout (7-16 s before)
    assert _peak_rss_mb(s.proc.pid) - rss0 < 100  # nothing was decoded (+1,785 MB before)
    assert _counts(s.project) == before


def test_a_decompression_bomb_is_a_422_naming_the_file(image_server):
    bomb = _png(Image.new("1", (20000, 20000)), optimize=True)
    r = image_server.client.post("/predict", files={"file": ("x.png", bomb, "image/png")})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "'x.png'" in detail and "400 megapixels" in detail and "decompression bomb" in detail


def test_large_allowed_images_decode_off_the_event_loop(image_server):
    """36-megapixel uploads within the limit are decoded in a worker thread, shrunk before their
    transparency is composited; /health keeps answering meanwhile."""
    s = image_server
    rgba = _png(_gradient(6000, 6000, "RGBA"))
    jpeg = io.BytesIO()
    _gradient(6000, 6000, "RGB").save(jpeg, format="JPEG", quality=70)
    palette = _palette_png(6000, 6000)
    rss0 = _peak_rss_mb(s.proc.pid)
    files = [("file", ("big.png", rgba, "image/png")), ("file", ("big.jpg", jpeg.getvalue(), "image/jpeg")),
             ("file", ("flat.png", palette, "image/png"))]
    r, health = _health_while(s, lambda: httpx.post(f"{s.url}/predict", files=files, timeout=120))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 3 and all(sum(p["scores"].values()) > 0.99 for p in body["predictions"])
    assert max(health) < 2
    # 36 MP of RGBA is 144 MB decoded; a full-size RGBA composite of all three was ~600 MB more
    assert _peak_rss_mb(s.proc.pid) - rss0 < 450


def test_upload_count_and_unreadable_formats(image_server):
    c = image_server.client
    small = _png(_gradient(16, 16, "L"))
    r = c.post("/predict", files=[("file", (f"{i}.png", small, "image/png")) for i in range(5)])
    assert r.status_code == 422 and "5 files" in r.json()["detail"] and "serving.max_files" in r.json()["detail"]
    r = c.post("/predict", files=[("file", (f"{i}.png", small, "image/png")) for i in range(4)])
    assert r.status_code == 200, r.text
    gif = io.BytesIO()
    _gradient(16, 16, "L").save(gif, format="GIF")  # Pillow reads GIF, but an upload is PNG, JPEG or BMP
    r = c.post("/predict", files={"file": ("a.gif", gif.getvalue(), "image/gif")})
    assert r.status_code == 422 and "'a.gif'" in r.json()["detail"] and "PNG, JPEG or BMP" in r.json()["detail"]
    long_name = "n" * 5000 + ".png"
    r = c.post("/predict", files={"file": (long_name, b"not an image", "image/png")})
    assert r.status_code == 422 and len(r.json()["detail"]) < 1000


def test_decode_limits_unit():
    """The pixel limit is read from the header (no decoding) and is a parameter; palette, 1-bit
    and transparent images come out as the model's format."""
    with pytest.raises(InputError, match=r"'a.png': a 2001×1000 image \(2 megapixels\); expected at most 2 mega"):
        decode_image(_png(Image.new("L", (2001, 1000))), GRAY8, "a.png", max_pixels=2_000_000)
    assert decode_image(_png(Image.new("L", (2000, 1000))), GRAY8, "a.png", max_pixels=2_000_000).shape == (1, 8, 8)
    one_bit = Image.new("1", (64, 64), 1)
    assert (decode_image(_png(one_bit), GRAY8) == 255).all()
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent: white, as before
    assert (decode_image(_png(clear), GRAY8) == 255).all()
    pal = Image.new("P", (640, 640), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50])
    gray = int(round(200 * 0.299 + 100 * 0.587 + 50 * 0.114))
    assert np.abs(decode_image(_png(pal), GRAY8).astype(int) - gray).max() <= 1
    assert decode_image(_png(pal), ImageFormat(3, 8, 8))[:, 0, 0].tolist() == [200, 100, 50]


# -- JSON numbers ------------------------------------------------------------------------------
@pytest.mark.parametrize(("pixels", "why"), [
    (["12"] * 64, "non-numeric value, a string ('12')"),
    ([True] * 64, "non-numeric value, a boolean (true)"),
    ([0] * 63 + [None], "non-numeric value, null"),
    ([0] * 640, "more than 64 numbers"),
    ([0] * 63 + [1e308], "0 to 255"),
    ([[[[0]]]], "nested deeper than 3 levels"),
])
def test_pixels_are_numbers_only_unit(pixels, why):
    with pytest.raises(InputError, match="field 'pixels'") as e:
        parse_pixels(pixels, GRAY8)
    assert why in str(e.value)


def test_json_numbers_that_are_not_numbers_are_422_over_http(image_server):
    c = image_server.client
    before = _counts(image_server.project)
    for body, field in (({"pixels": ["1"] * 64}, "'pixels'"), ({"pixels": [False] * 64}, "'pixels'"),
                        ({"instances": [[0] * 64, [0] * 63 + ["7"]]}, "'instances[1]'")):
        r = c.post("/predict", json=body)
        assert r.status_code == 422 and field in r.json()["detail"], r.text
    for raw in (b'{"pixels": [NaN]}', b'{"pixels": [Infinity]}', b'{"pixels": [1e400]}'):
        r = c.post("/predict", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "not valid JSON" in r.json()["detail"], r.text
    assert _counts(image_server.project) == before


def test_feedback_with_nan_or_infinity_is_a_422_that_json_can_carry(image_server):
    """The review's repro: {"kind": "rating", "value": NaN} was a 500 (the 422 echoed NaN, which
    JSON cannot encode); {"value": Infinity} with kind label was stored as inf."""
    c, auth = image_server.client, image_server.auth()
    pid = c.post("/predict", json={"pixels": [0] * 64}).json()["prediction_id"]
    before = _counts(image_server.project)
    for raw in (f'{{"prediction_id": "{pid}", "kind": "rating", "value": NaN}}',
                f'{{"prediction_id": "{pid}", "kind": "label", "label": "digit0", "value": Infinity}}',
                f'{{"prediction_id": "{pid}", "kind": "thumbs", "value": -Infinity}}',
                f'{{"prediction_id": "{pid}", "label": NaN}}'):
        r = c.post("/feedback", content=raw.encode(), headers={**auth, "content-type": "application/json"})
        assert r.status_code == 422, (raw, r.text)
        detail = r.json()["detail"]  # valid JSON: the server did not fail to encode its answer
        assert any(e["type"] == "finite_number" for e in detail), detail
        assert "NaN" in r.text or "Infinity" in r.text
    for body, field in (({"kind": "rating", "value": True}, "value"), ({"kind": "rating", "value": "3"}, "value"),
                        ({"label": "digit0", "extra": "x" * 50_000}, "extra")):
        r = c.post("/feedback", json={"prediction_id": pid, **body}, headers=auth)
        assert r.status_code == 422 and field in r.text and len(r.text) < 2000, r.text
    assert _counts(image_server.project) == before
    r = c.post("/feedback", json={"prediction_id": pid, "kind": "rating", "value": 4}, headers=auth)
    assert r.status_code == 201 and r.json()["value"] == 4


# -- bodies ------------------------------------------------------------------------------------
POST_ROUTES = ("/predict", "/feedback", "/admin/promote", "/admin/shadow", "/admin/rollback", "/admin/retrain")


def test_every_oversized_body_is_413_chunked_or_not(image_server):
    """The review's repro: 50 MB chunked (no Content-Length) to /feedback answered 400."""
    s = image_server
    auth = s.auth("admin")
    big = b"[" + b"0," * 5_000_001 + b"0]"
    for path in POST_ROUTES:
        # feedback and admin bodies are small JSON objects: their limit is 64 KiB, not 10 MB
        limit = "65536 bytes" if path != "/predict" else "10000000 bytes"
        status, body = _raw_post(s, path, {**auth, "Content-Type": "application/json"}, total=50_000_000)
        assert status == 413, (path, status, body)
        assert limit in body["detail"], body
        status, body = _raw_post(s, path, {**auth, "Content-Type": "application/json"}, None, body=big)
        assert status == 413 and f"received {len(big)} bytes" in body["detail"], (path, status, body)
    status, _ = _raw_post(s, "/predict", {"Content-Type": "multipart/form-data; boundary=xyz"}, total=20_000_000)
    assert status == 413
    # A chunked body within the limit still reaches the route whole.
    status, body = _raw_post(s, "/predict", {"Content-Type": "application/json"}, total=None,
                             body=json.dumps({"pixels": [0] * 64}).encode())
    assert status == 200 and body["label"]
    r = s.client.post("/predict", content=iter([b'{"pixels": [', b"0," * 63, b"0]}"]),
                      headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert s.client.get("/health").status_code == 200


def test_a_feedback_body_of_many_keys_is_refused_before_it_is_parsed(image_server):
    """FastAPI parses and validates a route's JSON body on the event loop before the route checks
    the key: a 10 MB object of 900,000 unknown keys took ~6.6 s there (one validation error per key),
    stalling /health. Feedback bodies are capped at 64 KiB before they are read."""
    s = image_server
    many = ("{" + ",".join(f'"k{i}": 0' for i in range(900_000)) + "}").encode()
    status, body = _raw_post(s, "/feedback", {"Content-Type": "application/json"}, None, body=many)
    assert status == 413 and f"received {len(many)} bytes" in body["detail"] and "65536 bytes" in body["detail"]
    # a normal feedback body still passes
    r = s.client.post("/feedback", json={"prediction_id": "nope", "label": "x"}, headers=s.auth())
    assert r.status_code == 404, r.text


# -- text, rows, audio -------------------------------------------------------------------------
def test_text_rows_and_clips_are_bounded(projects):
    servers = [Server(projects[k]) for k in ("text", "tabular", "audio")]
    try:
        text, table, audio = servers
        r = text.client.post("/predict", json={"text": "fine " * 200})  # 1000 characters
        assert r.status_code == 422 and "1000 characters" in r.json()["detail"]
        assert "serving.max_text_chars" in r.json()["detail"]
        r = text.client.post("/predict", json={"instances": ["good", 12]})
        assert r.status_code == 422 and "'instances[1]'" in r.json()["detail"]
        assert text.client.post("/predict", json={"text": "fine " * 99}).status_code == 200

        columns = table.client.get("/info").json()["columns"]
        row = {c: 1.0 for c in columns}
        row["band"] = "high"
        assert table.client.post("/predict", json={"row": row}).status_code == 200
        for bad, why in (({**row, columns[0]: "Infinity"}, "infinite"), ({**row, columns[0]: True}, "True (bool)"),
                         ({**row, "band": "x" * 20_000}, "20000 characters"),
                         ({**row, **{f"extra{i}": i for i in range(60)}}, "serving.max_row_fields")):
            r = table.client.post("/predict", json={"row": bad})
            assert r.status_code == 422 and why in r.json()["detail"], (why, r.text)
            assert len(r.text) < 1000

        def wav(seconds: float, rate: int, fmt: str = "WAV") -> bytes:
            buf = io.BytesIO()
            sf.write(buf, np.zeros(int(seconds * rate), np.float32), rate, format=fmt)
            return buf.getvalue()

        long_flac = wav(600, 16_000, "FLAC")  # ten minutes of silence: a small file, 9.6 M samples decoded
        assert len(long_flac) < 1_000_000
        r = audio.client.post("/predict", files={"file": ("long.flac", long_flac, "audio/flac")})
        assert r.status_code == 422 and "'long.flac'" in r.json()["detail"] and "600.0 s" in r.json()["detail"]
        r = audio.client.post("/predict", files={"file": ("fast.wav", wav(0.5, 96_000), "audio/wav")})
        assert r.status_code == 422 and "96000 Hz" in r.json()["detail"]
        r = audio.client.post("/predict", json={"samples": [0.1, True, 0.2], "sample_rate": 16000})
        assert r.status_code == 422 and "boolean" in r.json()["detail"]
        r = audio.client.post("/predict", json={"samples": [0.0] * 100, "sample_rate": 10**12})
        assert r.status_code == 422 and "'sample_rate'" in r.json()["detail"]
        r = audio.client.post("/predict", json={"samples": [0.0] * 100_000, "sample_rate": 16000})
        assert r.status_code == 422 and "at most 5 s" in r.json()["detail"]
        assert audio.client.post("/predict", files={"file": ("ok.wav", wav(1, 16_000), "audio/wav")}).status_code == 200
    finally:
        for s in servers:
            s.stop()


# -- the spec ----------------------------------------------------------------------------------
def test_requirements_must_be_finite_through_the_real_cli(tmp_path):
    """The review's repro: 'modelloop init --target nan' wrote 'target: .nan'."""
    for value in ("nan", "inf", "-inf"):
        proj = tmp_path / f"p-{value}"
        proc = cli("init", str(proj), "--task", "image-classification", f"--target={value}")
        assert proc.returncode == 2, proc.stderr
        assert "requirements.target" in proc.stderr and "finite" in proc.stderr
        assert not (proj / "modelloop.yaml").exists()
    proc = cli("init", str(tmp_path / "ok"), "--task", "image-classification", "--target", "0.9")
    assert proc.returncode == 0, proc.stderr
    spec = yaml.safe_load((tmp_path / "ok" / "modelloop.yaml").read_text())
    assert spec["serving"]["max_image_pixels"] == 40_000_000 and spec["serving"]["max_files"] == 64
    spec["serving"]["max_audio_seconds"] = float("nan")
    with pytest.raises(SpecError, match="serving.max_audio_seconds"):
        parse_spec(spec)
    spec["serving"]["max_audio_seconds"] = 60.0
    spec["requirements"]["time_budget_s"] = float("inf")
    with pytest.raises(SpecError, match="requirements.time_budget_s"):
        parse_spec(spec)
