"""`scenekit plot RUN...`: one run's curves, several runs overlaid, one-line errors."""

import pytest

from scenekit.cli import main


def _run(folder, values):
    folder.mkdir()
    (folder / "metrics.csv").write_text("phase,epoch,step,lr,seconds,train_loss,AP50\n" + "".join(
        f"main,{e + 1},{e + 1},0.01,1.0,{1 / (e + 1)},{v}\n" for e, v in enumerate(values)))
    return folder


def test_plot_draws_one_run_and_overlays_several(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    a, b = _run(tmp_path / "a", (0.1, 0.5)), _run(tmp_path / "b", (0.2, 0.3))
    assert main(["plot", str(a), "--best-metric", "AP50", "--out", str(tmp_path / "one.png")]) == 0
    assert main(["plot", str(a), str(b / "metrics.csv"), "--out", str(tmp_path / "two.png")]) == 0
    assert "plotted 2 runs" in capsys.readouterr().out
    for name in ("one.png", "two.png"):
        assert max(Image.open(tmp_path / name).size) >= 512


def test_plot_of_a_folder_without_a_log_is_one_line_naming_it(tmp_path, capsys):
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path) in error and "metrics.csv" in error and len(error.strip().splitlines()) == 1
