"""The web demo's page in a real browser: headless Chromium opens it, the page sends an image to the API and
draws the answer on its canvas; the test reads the drawn state back from the DOM (`--dump-dom`)."""

import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from scenekit.api import Model  # noqa: E402
from scenekit.serve.app import ServeConfig, create_app  # noqa: E402
from scenekit.viz import colour_for  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.timeout(40),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                 "(apt-get install chromium)")]


def one_square(images):
    """A stand-in model: one 'square' (label 2) at integer pixels, with its mask."""
    height, width = images[0].shape[:2]
    mask = np.zeros((1, height, width), np.uint8)
    mask[0, 40:100, 30:120] = 1
    return [{"boxes": np.array([[30.0, 40.0, 120.0, 100.0]]), "scores": np.array([0.93]), "labels": np.array([2]),
             "masks": mask}]


@pytest.fixture(scope="module")
def server():
    recipe = SimpleNamespace(model_name="browser-test", categories={1: "circle", 2: "square"},
                             predict=lambda module, images, device: one_square(images))
    app = create_app(Model(recipe, module=None), config=ServeConfig())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    assert instance.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(5)


def test_page_uploads_an_image_and_draws_the_boxes(server, tmp_path):
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
               f"{server}/?image=/example.png"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    dom = done.stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, f"no page in chromium's output: {done.stderr[-2000:]}"
    attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attributes.get("state") == "drawn", f"page state {attributes}, status: " \
        f"{re.search(r'id=.status.[^>]*>([^<]*)<', dom)}"
    assert attributes["boxes"] == "1" and attributes["masks"] == "1"
    # The canvas pixel on the box's outline is the class's colour, the one `scenekit.viz` gives label 2.
    expected = ",".join(str(v) for v in colour_for(2))
    assert attributes["probe-expected"] == expected
    assert attributes["probe"] == expected
    assert "square" in dom and "0.930" in dom                      # the table of detections
