"""`scenekit demo` (`make demo`) shows the chapter: two detectors side by side, masks, a caption's attention, a trace."""

import json

import pytest

from scenekit.demo import run_demo


@pytest.mark.slow
def test_demo_writes_its_table_and_every_picture_it_names(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    summary = run_demo(tmp_path, train_images=16, epochs=1, caption_images=16, caption_epochs=1, test_images=6)
    printed = capsys.readouterr().out
    assert set(summary["detection"]) == {"YOLOv2 (one stage)", "Mask R-CNN (two stages)"}
    for row in summary["detection"].values():
        assert row["images_per_s"] > 0 and 0 <= row["mAP50"] <= 1
    assert json.loads((tmp_path / "results.json").read_text())["caption"]["caption"] == summary["caption"]["caption"]
    named = [tmp_path / "pictures" / "caption_attention.png", tmp_path / "trace" / "index.html",
             *sorted((tmp_path / "pictures").glob("detection_*.png"))]
    assert len(named) == 6                                         # 4 detection pictures
    for path in named:
        assert path.is_file() and str(path) in printed             # the demo says where each picture is
    for path in named[:1] + named[2:]:
        assert max(Image.open(path).size) >= 512
    assert (tmp_path / "yolo2" / "curves.png").is_file()
