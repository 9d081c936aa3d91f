"""The web demo's API (scenekit/serve/app.py): good uploads answer JSON, bad ones a 4xx with a reason."""

import io
import struct
import threading
import zlib
from types import SimpleNamespace

# No importorskip: fastapi, httpx (starlette's TestClient) and python-multipart are in the `[test]` extra, and a
# missing one must fail these tests loudly (an ImportError at collection), never turn them into silent skips.
import fastapi  # noqa: F401
import httpx  # noqa: F401
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from scenekit.api import Model
from scenekit.masks import rle_decode
from scenekit.serve.app import HTTPProblem, ServeConfig, create_app, decode_upload

pytestmark = pytest.mark.timeout(60)
NAMES = {1: "circle", 2: "square"}
# How long a test waits for something a working server does at once, before calling it a hang. Only a broken server
# ever reaches it; no assertion compares a duration with it.
HANG = 30


def png_bytes(height=40, width=50, fmt="PNG"):
    buffer = io.BytesIO()
    image = np.zeros((height, width, 3), np.uint8)
    image[5:15, 5:25] = (200, 100, 50)
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def box_and_mask(images):
    height, width = images[0].shape[:2]
    masks = np.zeros((2, height, width), np.uint8)
    masks[0, 10:20, 10:30] = 1
    masks[1, 0:3, 0:4] = 1
    return [{"boxes": np.array([[10, 10, 30, 20.0], [0, 0, 4, 3]]), "scores": np.array([0.9, 0.1]),
             "labels": np.array([2, 1]), "masks": masks}]


def stand_in(predict, name="fake", categories=NAMES) -> Model:
    """A scenekit.Model whose recipe answers `predict(images) -> [prediction dict]`: the app's path, no network."""
    recipe = SimpleNamespace(model_name=name, categories=categories,
                             predict=lambda module, images, device: predict(images))
    return Model(recipe, module=None)


def client(predict=box_and_mask, **config):
    # raise_server_exceptions=False: see the 500 a real client sees, not the exception the server logs
    return TestClient(create_app(stand_in(predict), config=ServeConfig(**config)),
                      raise_server_exceptions=False)


def post(c, payload, name="a.png", **kwargs):
    return c.post("/predict", files={"file": (name, payload, "application/octet-stream")}, **kwargs)


def test_healthz_names_the_model_and_its_categories():
    answer = client().get("/healthz").json()
    assert answer["status"] == "ok" and answer["model"] == "fake" and answer["categories"] == {"1": "circle",
                                                                                               "2": "square"}


def test_png_upload_answers_boxes_labels_scores_and_rle_masks():
    response = post(client(), png_bytes())
    assert response.status_code == 200
    answer = response.json()
    assert (answer["width"], answer["height"]) == (50, 40)
    first, second = answer["detections"]
    assert first == {**first, "box": [10.0, 10.0, 30.0, 20.0], "label": 2, "name": "square", "score": 0.9}
    mask = rle_decode(first["mask"])
    expected = np.zeros((40, 50), np.uint8)
    expected[10:20, 10:30] = 1
    np.testing.assert_array_equal(mask, expected)
    assert second["name"] == "circle" and rle_decode(second["mask"]).sum() == 12


def test_min_score_drops_weaker_detections():
    answer = post(client(), png_bytes(), data={"min_score": "0.5"}).json()
    assert [d["score"] for d in answer["detections"]] == [0.9]
    assert post(client(), png_bytes(), data={"min_score": "lots"}).status_code == 422


def test_jpeg_is_accepted():
    assert post(client(), png_bytes(fmt="JPEG"), "a.jpg").status_code == 200


def test_semantic_maps_and_captions_are_answered():
    def segment(images):
        class_map = np.zeros(images[0].shape[:2], np.int64)
        class_map[:10] = 1
        return [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0), "semantic": class_map,
                 "caption": "a red square"}]
    answer = post(client(segment), png_bytes()).json()
    assert answer["caption"] == "a red square"
    (region,) = answer["semantic"]
    assert region["name"] == "circle" and region["pixels"] == 500 and rle_decode(region["mask"])[:10].all()


@pytest.mark.parametrize("data, status, words", [
    (b"", 400, "empty"),
    (b"hello, I am text", 415, "not an image"),
    (png_bytes()[:80], 400, "truncated"),
    (png_bytes()[:-30], 400, "truncated"),
    (b"GIF89a" + b"\x00" * 20, 415, "not an image"),
], ids=["empty", "text", "cut-header", "cut-data", "gif-garbage"])
def test_bad_files_are_refused_with_a_reason(data, status, words):
    response = post(client(), data)
    assert response.status_code == status
    assert words in response.json()["error"]


def huge_png_header(width=30000, height=30000):
    """A PNG whose header claims width x height pixels, with a few bytes of data: a decompression bomb's header."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_pixel_bomb_is_refused_from_its_header_before_decoding():
    response = post(client(), huge_png_header())
    assert response.status_code == 413 and "pixels" in response.json()["error"]
    response = post(client(max_pixels=100), png_bytes())          # 50 x 40 = 2000 > 100
    assert response.status_code == 413 and "2000 pixels" in response.json()["error"]


def test_upload_over_the_size_cap_is_refused_declared_or_streamed():
    c = client(max_upload_bytes=10_000)
    assert post(c, b"x" * 20_000).status_code == 413

    def stream():                                   # no Content-Length: counted while it arrives
        for _ in range(30):
            yield b"y" * 1000
    response = c.post("/predict", content=stream(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_malformed_requests_are_4xx():
    c = client()
    assert c.post("/predict", files={"image": ("a.png", png_bytes(), "image/png")}).status_code == 422
    assert c.post("/predict", content=png_bytes(), headers={"content-type": "image/png"}).status_code == 415
    assert c.post("/predict", content=b"--zz\r\ngarbage",
                  headers={"content-type": "multipart/form-data; boundary=b"}).status_code == 400


def test_a_failing_model_answers_500_and_the_server_carries_on():
    calls = []

    def flaky(images):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return box_and_mask(images)
    c = client(flaky)
    response = post(c, png_bytes())
    assert response.status_code == 500 and "boom" in response.json()["error"]
    assert post(c, png_bytes()).status_code == 200


def test_slow_prediction_times_out_with_504():
    # The model is held until the test has the answer in hand, so it cannot finish within the 0.1 s limit on any
    # machine: the only right answer is 504. (A server without the timeout would answer 200 once released.)
    release = threading.Event()

    def held(images):
        release.wait(HANG)
        return box_and_mask(images)
    c = client(held, timeout_s=0.1)
    try:
        response = post(c, png_bytes())
    finally:
        release.set()
    assert response.status_code == 504 and "longer than 0.1 s" in response.json()["error"]
    assert c.get("/healthz").status_code == 200


def test_saturated_server_answers_503_at_once():
    # "At once" without a clock: the first prediction is held inside the model until the test has the second
    # request's answer. A server that queued the second request instead of refusing it could not answer it before
    # the release, which only comes after that answer.
    release, started = threading.Event(), threading.Event()
    calls = []

    def blocking(images):
        calls.append(len(images))
        started.set()
        release.wait(HANG)
        return box_and_mask(images)
    c = client(blocking, workers=1, max_pending=1)
    answers = {}

    def send(key):
        answers[key] = post(c, png_bytes())
    first = threading.Thread(target=send, args=("first",), daemon=True)
    first.start()
    try:
        assert started.wait(HANG), "the first prediction never started"
        second = threading.Thread(target=send, args=("second",), daemon=True)
        second.start()
        second.join(HANG)
        assert not second.is_alive(), "the second request waited for the busy slot instead of being refused"
        assert answers["second"].status_code == 503 and "busy" in answers["second"].json()["error"]
        assert "first" not in answers and calls == [1]      # refused while the first ran; never reached the model
    finally:
        release.set()
    first.join(HANG)
    assert answers["first"].status_code == 200
    assert post(c, png_bytes()).status_code == 200           # the slot came back
    assert calls == [1, 1]


def test_page_and_its_scripts_are_served():
    c = client()
    page = c.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    assert "rleCounts" in c.get("/static/app.js").text
    example = c.get("/example.png")
    assert example.status_code == 200 and Image.open(io.BytesIO(example.content)).size == (256, 256)


def test_decode_upload_returns_rgb_pixels():
    image = decode_upload(png_bytes(), 10_000)
    assert image.shape == (40, 50, 3) and tuple(image[6, 6]) == (200, 100, 50)
    with pytest.raises(HTTPProblem):
        decode_upload(b"\x89PNG\r\n\x1a\n", 10_000)


def test_a_real_model_answers_what_its_recipe_predicts():
    import torch

    from scenekit.data.world import CATEGORIES, make_world
    from scenekit.models.registry import make_recipe

    recipe = make_recipe("yolo2", dict(CATEGORIES), {"channels": [8, 8, 16, 16, 16], "head_channels": 32,
                                                     "anchors": "hand"})
    torch.manual_seed(0)
    model = recipe.build_model(recipe.model_config).eval()
    image = make_world(1, seed=5, split="test", image_size=128).records[0].image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")

    def predict(images):
        with torch.no_grad():
            return recipe.predict(model, images, torch.device("cpu"))
    c = TestClient(create_app(Model(recipe, model), config=ServeConfig(max_detections=10)))
    answer = post(c, buffer.getvalue()).json()
    expected = predict([image])[0]
    assert len(answer["detections"]) == min(10, len(expected["scores"])) > 0
    for item, box, score, label in zip(answer["detections"], expected["boxes"], expected["scores"],
                                       expected["labels"]):
        np.testing.assert_allclose(item["box"], box.numpy(), atol=0.01)
        assert abs(item["score"] - float(score)) < 1e-5 and item["label"] == int(label)
        assert item["name"] == CATEGORIES[int(label)]
