"""The web demo's HTTP app: POST an image, get the model's boxes, masks or caption back as JSON.

It serves a `scenekit.Model` (`scenekit.load` of a checkpoint or an exported ONNX file): each upload is one
`model.predict`, whose `scenekit.Result` goes back as JSON (`prediction_json`).

    GET  /             the page (static/index.html): drop an image, see the result drawn on a canvas
    GET  /healthz      {"status": "ok", "model", "categories", "palette"}
    GET  /example.png  an image of the embedded world, to try the model on
    POST /predict      multipart form with the image in field "file" (optional field or query "min_score")
                       -> {"model", "width", "height", "seconds", "detections": [{"box" [x1, y1, x2, y2],
                           "label", "name", "score"[, "mask" COCO RLE]}], "semantic": [{"label", "name",
                           "mask"}], "caption"}

Bad input never takes the server down and always gets a 4xx with a message saying what was wrong:
413 for a body over `max_upload_bytes` (checked while it streams in, not after) or an image over
`max_pixels` (checked from the header, before any pixel is decoded: the decompression-bomb guard);
415 for a file that is not an image; 400 for a truncated or corrupt one; 422 for a missing field.
At most `workers` predictions run at once and `max_pending` wait or run; beyond that the answer is 503 at
once (bounded memory under a flood). A prediction that takes over `timeout_s` answers 504.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
import numpy as np

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
except ImportError:                                  # an optional extra, like onnxruntime for export
    raise ImportError("the web demo needs fastapi and uvicorn: pip install 'scenekit[serve]'") from None

STATIC = Path(__file__).parent / "static"
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")


@dataclass
class ServeConfig:
    max_upload_bytes: int = 10 * 2 ** 20        # request body cap
    max_pixels: int = 4096 * 4096               # width x height cap, read from the header before decoding
    timeout_s: float = 30.0                     # per prediction
    workers: int = 1                            # predictions running at once (the model is not re-entrant-safe
                                                # for free: one worker per model copy)
    max_pending: int = 16                       # running + waiting; beyond: 503
    max_detections: int = 100                   # most detections in one answer
    min_score: float = 0.0                      # default score floor of the answer


class HTTPProblem(Exception):
    """An answer other than 200, with the message the client sees."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ------------------------------------------------------------------------------------------------ decoding
def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Uploaded bytes -> [H, W, 3] uint8, or an HTTPProblem saying what is wrong with them."""
    from PIL import Image, ImageFile

    if not data:
        raise HTTPProblem(400, "the uploaded file is empty")
    ImageFile.LOAD_TRUNCATED_IMAGES = False        # a cut-off file is an error, not a grey bottom half
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            picture = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise HTTPProblem(413, f"the image has too many pixels (more than {max_pixels})") from None
        except Exception:
            raise HTTPProblem(415, "the uploaded file is not an image PIL can read (PNG, JPEG, BMP, GIF, WEBP, "
                                   "TIFF)") from None
        try:
            if picture.format not in IMAGE_FORMATS:
                raise HTTPProblem(415, f"image format {picture.format} is not accepted; send "
                                       f"{', '.join(IMAGE_FORMATS)}")
            width, height = picture.size
            if width < 1 or height < 1:
                raise HTTPProblem(400, f"the image has no pixels ({width} x {height})")
            if width * height > max_pixels:         # decided from the header: nothing has been decoded yet
                raise HTTPProblem(413, f"the image is {width} x {height} = {width * height} pixels, more than "
                                       f"the limit of {max_pixels}")
            picture.load()
            array = np.asarray(picture.convert("RGB"))
        except HTTPProblem:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise HTTPProblem(413, f"the image has too many pixels (more than {max_pixels})") from None
        except Exception as error:
            raise HTTPProblem(400, f"the image is truncated or corrupt ({type(error).__name__}: {error})") from None
        finally:
            picture.close()
    return array


# ------------------------------------------------------------------------------------------------ answers
def prediction_json(result, *, min_score: float = 0.0, max_detections: int = 100) -> dict:
    """One image's `scenekit.Result` as the JSON the page draws: detections (masks as COCO RLE) at least
    `min_score`, best first, at most `max_detections`; or the class map's regions; and the caption."""
    from scenekit.masks import compress, rle_encode

    answer: dict = {"detections": []}
    order = np.argsort(-result.scores, kind="stable")
    order = order[result.scores[order] >= min_score][:max_detections]
    if result.semantic is None:
        for i in order.tolist():
            item = {"box": [round(float(v), 2) for v in result.boxes[i]], "label": int(result.labels[i]),
                    "name": result.names[i], "score": round(float(result.scores[i]), 5)}
            if result.masks is not None:
                item["mask"] = compress(rle_encode(result.masks[i]))
            answer["detections"].append(item)
    else:
        class_map = np.asarray(result.semantic)
        answer["semantic"] = [{"label": int(c), "name": str(result.categories.get(int(c), int(c))),
                               "mask": compress(rle_encode(class_map == c)), "pixels": int((class_map == c).sum())}
                              for c in np.unique(class_map).tolist() if c != 0]
    if result.caption is not None:
        answer["caption"] = str(result.caption)
    return answer


# ------------------------------------------------------------------------------------------------ the app
def create_app(model, *, config: ServeConfig | None = None):
    """The FastAPI app around `model`: a `scenekit.Model` (`scenekit.load(checkpoint or ONNX file)`), or anything
    with its `name`, `categories` and `predict(images) -> [scenekit.Result]`."""
    from scenekit.viz import PALETTE

    config = config or ServeConfig()
    model_name = model.name
    categories = {int(k): v for k, v in model.categories.items()}
    app = FastAPI(title=f"scenekit: {model_name}", docs_url=None, redoc_url=None)
    pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="scenekit-predict")
    lock = threading.Lock()
    pending = [0]                                  # running + waiting predictions

    @app.exception_handler(HTTPProblem)
    async def problem(_, error: HTTPProblem):
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected(_, error: Exception):     # the server answers 500 and carries on
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    app.add_middleware(_BodyLimit, limit=config.max_upload_bytes)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": model_name, "categories": {str(k): v for k, v in categories.items()},
                "palette": PALETTE, "pending": pending[0]}

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/example.png")
    async def example(seed: int = 0):
        from PIL import Image

        from scenekit.data.world import make_world

        image = make_world(1, seed=abs(int(seed)) % 100000, split="test", image_size=256).records[0].image
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    def work(data: bytes, min_score: float) -> dict:
        began = time.perf_counter()
        image = decode_upload(data, config.max_pixels)
        result = model.predict([image])[0]
        answer = prediction_json(result, min_score=min_score, max_detections=config.max_detections)
        return {"model": model_name, "width": int(image.shape[1]), "height": int(image.shape[0]),
                "seconds": round(time.perf_counter() - began, 4), **answer}

    def release(_future) -> None:
        with lock:
            pending[0] -= 1

    @app.post("/predict")
    async def predict_endpoint(request: Request):
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise HTTPProblem(415, "send the image as multipart/form-data in a field named 'file'")
        form = await request.form(max_files=1, max_fields=4)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPProblem(422, "the form has no file field named 'file'")
            data = await upload.read()
            min_score = _score(form.get("min_score") or request.query_params.get("min_score"), config.min_score)
        finally:
            await form.close()
        with lock:
            if pending[0] >= config.max_pending:
                raise HTTPProblem(503, f"busy: {pending[0]} predictions running or waiting; try again shortly")
            pending[0] += 1
        future = pool.submit(work, data, min_score)
        future.add_done_callback(release)      # the slot frees when the work really ends, even after a timeout
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), config.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPProblem(504, f"the prediction took longer than {config.timeout_s:g} s") from None

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.pool = pool
    return app


def _score(text, default: float) -> float:
    if text in (None, ""):
        return default
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise HTTPProblem(422, f"min_score must be a number, got {str(text)[:40]!r}") from None
    if not 0.0 <= value <= 1.0:
        raise HTTPProblem(422, f"min_score must lie in [0, 1], got {value}")
    return value


class _BodyLimit:
    """ASGI middleware: refuse a request body over `limit` bytes with 413, by its Content-Length header or,
    for a streamed body, as soon as the count passes the limit (nothing over the limit is buffered)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _send_json(send, 413, f"the upload is larger than the limit of {self.limit} bytes")
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, f"the upload is larger than the limit of {self.limit} bytes")


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------------ start-up
SERVES = "an image alone: detectors (boxes, masks), segmenters (class maps) and captioners (a caption)"


def check_servable(model, source=None) -> None:
    """Refuse at start a model whose answers would all be 500s (a language model, a VQA model that needs a
    question, a model that fails): one prediction on an image of the world must give an answer the page draws.
    Raises a ScenekitError, one line naming the model, why, and what serve answers."""
    from scenekit.data.world import make_world
    from scenekit.errors import DataError, ScenekitError

    image = make_world(1, seed=0, split="test", image_size=128).records[0].image
    try:
        prediction_json(model.predict([image])[0])
    except Exception as error:                      # whatever it is, every request would meet it too
        reason = error.reason if isinstance(error, DataError) else f"{type(error).__name__}: {error}"
        where = f"{source}: " if source else ""
        raise ScenekitError(f"{where}cannot serve a {model.name} model ({reason}); serve answers {SERVES}") from None


# ------------------------------------------------------------------------------------------------ running
def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the app under uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)
