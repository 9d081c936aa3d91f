"""`scenekit data convert`: a target or source that does not fit its format is one line and exit 2, nothing
written; what a format cannot keep is said; converted captions read back."""

import numpy as np
import pytest

from scenekit.cli import main
from scenekit.data.records import Dataset, Record
from scenekit.data.sources import save_data


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("convert") / "w"
    assert main(["data", "world", "--out", str(folder), "--images", "3", "--image-size", "64", "--seed", "1"]) == 0
    return folder


# target spec -> what the one line says; `f.json` is an existing file, `d.json` an existing folder
MISMATCHES = [
    ("voc:out.json", "voc: writes a VOC root (Annotations/, JPEGImages/, ImageSets/) in a folder, not a .json file"),
    ("voc:f.json", "voc: writes a VOC root"),
    ("voc:plain", "voc: writes a VOC root (Annotations/, JPEGImages/, ImageSets/) in a folder, not an existing file"),
    ("yolo:out.json", "yolo: writes images/, labels/ and data.yaml in a folder, not a .json file"),
    ("yolo:out/custom.yaml", "so the YAML is always data.yaml: give yolo:DIR or yolo:DIR/data.yaml"),
    ("coco:out.yaml", "coco: writes a .json file (coco:FILE.json) or instances_<split>.json in a folder (coco:DIR), "
                      "not a .yaml file"),
    ("coco:plain", "not an existing file"),
    ("coco:d.json", "d.json: field spec: is a folder"),
    ("coco:f.json/instances.json", "f.json: field spec: is a file, so"),
    ("voc:f.json/voc", "is a file, so"),
    ("world", "the world is generated, not written to"),
    ("voc:", "bad data spec 'voc:'"),
    ("pascal:out", "bad data spec 'pascal:out'"),
]


@pytest.mark.parametrize("target, says", MISMATCHES)
def test_a_target_that_does_not_fit_its_format_is_one_line_and_writes_nothing(world, tmp_path, monkeypatch, capsys,
                                                                             target, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.json").write_text("{}")
    (tmp_path / "plain").write_text("")
    (tmp_path / "d.json").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(["data", "convert", "--from", f"coco:{world}", "--to", target]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("scenekit data: error: ") and says in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("source, says", [
    ("yolo:{world}/instances_val.json", "yolo: reads a dataset YAML (data.yaml) or a folder holding one, not a .json"),
    ("voc:{world}/instances_val.json", "not a VOC root"),
    ("voc:{world}", "not a VOC root"),
    ("coco:{world}/images", "expected instances_train.json or a single instances*.json"),
])
def test_a_source_that_does_not_fit_its_format_is_one_line(world, tmp_path, capsys, source, says):
    (world / "instances_val.json").write_text((world / "instances_train.json").read_text())
    capsys.readouterr()
    assert main(["data", "convert", "--from", source.format(world=world), "--to", f"voc:{tmp_path / 'v'}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and says in err


def test_fitting_targets_still_write(world, tmp_path):
    assert main(["data", "convert", "--from", f"coco:{world}", "--to", f"yolo:{tmp_path / 'y' / 'data.yaml'}"]) == 0
    assert (tmp_path / "y" / "data.yaml").is_file()
    assert main(["data", "convert", "--from", f"coco:{world}", "--to", f"coco:{tmp_path / 'c'}"]) == 0
    assert (tmp_path / "c" / "instances_train.json").is_file()


def test_write_errors_of_the_system_are_one_line(world, tmp_path, capsys, monkeypatch):
    import scenekit.data.sources as sources

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sources, "save_data", full_disk)
    capsys.readouterr()
    assert main(["data", "convert", "--from", f"coco:{world}", "--to", f"voc:{tmp_path / 'v'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"scenekit data: error: cannot write voc:{tmp_path / 'v'}: [Errno 28] No space left on device"


def test_masks_voc_cannot_hold_are_a_note_on_stderr(tmp_path, capsys, monkeypatch):
    import scenekit.cli as cli

    square = [[2, 2, 12, 2, 12, 12, 2, 12]]
    inner = [[8, 8, 14, 8, 14, 14, 8, 14]]
    record = Record(1, "a.png", 20, 20, boxes=[[2, 2, 12, 12], [8, 8, 14, 14]], labels=[1, 1],
                    segmentations=[square, inner], image=np.zeros((20, 20, 3), np.uint8))
    monkeypatch.setattr(cli, "_load_for_cli", lambda spec, args: Dataset([record], {1: "box"}))
    assert main(["data", "convert", "--from", "world", "--to", f"voc:{tmp_path / 'v'}"]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("scenekit data convert: note: ") and "the masks of 1 objects in 1 images overlap" in err


def test_converted_captions_name_the_images_as_the_instances_file_does(world, tmp_path):
    from scenekit.data.captions import load_language_data
    from scenekit.data.sources import load_data
    from scenekit.data.transforms import load_image

    original = load_data(f"coco:{world}")                       # file-backed images, captions attached
    for target in (tmp_path / "out" / "x.json", tmp_path / "copy"):
        written = save_data(original, f"coco:{target}")
        captions = written.parent / ("captions_x.json" if target.suffix else "captions_train.json")
        data = load_language_data(f"coco-captions:{captions}")
        assert [r.captions for r in data.records] == [r.captions for r in original.records]
        for record, source in zip(data.records, original.records):
            assert np.array_equal(load_image(data, record), load_image(original, source))


@pytest.mark.parametrize("kind", ["coco", "voc", "yolo"])
def test_converted_data_reads_back_after_it_is_moved_and_the_source_is_gone(world, tmp_path, kind):
    import shutil

    from scenekit.data.sources import load_data
    from scenekit.data.transforms import load_image

    source = tmp_path / "source"
    shutil.copytree(world, source)
    original = load_data(f"coco:{source}")
    pixels = [load_image(original, r) for r in original.records]
    assert main(["data", "convert", "--from", f"coco:{source}", "--to", f"{kind}:{tmp_path / 'out'}"]) == 0
    shutil.rmtree(source)                                              # the source folder is gone
    shutil.move(tmp_path / "out", tmp_path / "elsewhere")              # and the output moved
    spec = {"coco": "coco:", "voc": "voc:", "yolo": "yolo:"}[kind] + str(tmp_path / "elsewhere")
    moved = load_data(spec, "train")
    assert len(moved) == len(original)
    for record, expected in zip(moved.records, pixels):
        assert np.array_equal(load_image(moved, record), expected)


def test_a_split_in_the_target_spec_names_the_split_written(world, tmp_path):
    from scenekit.data.sources import load_data

    target = tmp_path / "new" / "VOC"                                   # does not exist yet
    assert main(["data", "convert", "--from", f"coco:{world}", "--to", f"voc:{target}:val"]) == 0
    assert (target / "ImageSets" / "Main" / "val.txt").is_file()
    assert not (target / "ImageSets" / "Main" / "train.txt").exists()
    assert len(load_data(f"voc:{target}:val")) == 3
    written = save_data(load_data(f"coco:{world}"), f"coco:{tmp_path / 'c'}:test")
    assert written.name == "instances_test.json"


def test_coco_copies_of_images_that_share_a_file_stem_do_not_overwrite_each_other(tmp_path):
    from scenekit.data.sources import load_data
    from scenekit.data.transforms import load_image

    for folder, value in (("a", 10), ("b", 200)):
        (tmp_path / folder).mkdir()
        from PIL import Image
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / folder / "img.png")
    records = [Record(1, str(tmp_path / "a" / "img.png"), 8, 8, boxes=[[1, 1, 5, 5]], labels=[1]),
               Record(2, str(tmp_path / "b" / "img.png"), 8, 8, boxes=[[2, 2, 6, 6]], labels=[1])]
    written = save_data(Dataset(records, {1: "box"}), f"coco:{tmp_path / 'out'}")
    back = load_data(f"coco:{written}")
    assert [int(load_image(back, r)[0, 0, 0]) for r in back.records] == [10, 200]
