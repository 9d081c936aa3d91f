"""`scenekit trace`: a family name (untrained) or a checkpoint, and an image -> labelled pictures + index.html."""

import re

from PIL import Image

from scenekit.cli import main
from scenekit.data.world import make_world


def _image(tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(make_world(1, seed=0, split="test", image_size=96).records[0].image).save(path)
    return path


def test_trace_of_an_untrained_family_writes_its_steps_and_an_index(tmp_path, capsys):
    out = tmp_path / "trace"
    assert main(["trace", "yolo2", str(_image(tmp_path)), "--out", str(out),
                 "--option", "channels=[8,16,16,32,32]"]) == 0
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert pictures and pictures[0].startswith("01-")
    linked = re.findall(r'src="([^"]+\.png)"', (out / "index.html").read_text())
    assert sorted(set(linked)) == pictures
    assert all(max(Image.open(out / name).size) >= 512 for name in pictures)
    assert f"{len(pictures)} pictures" in capsys.readouterr().out


def test_trace_refuses_an_unknown_family_a_missing_image_and_a_bad_option(tmp_path, capsys):
    image = str(_image(tmp_path))
    assert main(["trace", "yolo9", image, "--out", str(tmp_path / "t")]) == 2
    assert "yolo9" in capsys.readouterr().err
    assert main(["trace", "yolo2", str(tmp_path / "missing.png"), "--out", str(tmp_path / "t")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["trace", "yolo2", "--out", str(tmp_path / "t")]) == 2
    assert main(["trace", "yolo2", image, "--option", "chanels=[8]", "--out", str(tmp_path / "t")]) == 2
    assert "channels" in capsys.readouterr().err
