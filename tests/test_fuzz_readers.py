"""Malformed annotation files (COCO JSON, VOC XML, YOLO YAML + label lines) end in DataError, never in another
exception and never in a hang: hypothesis mutates valid files written by the writers, every field in turn."""

import copy
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scenekit.data.coco import read_coco, write_coco
from scenekit.data.records import Dataset
from scenekit.data.voc import read_voc, write_voc
from scenekit.data.world import make_world
from scenekit.data.yolo import read_yolo, write_yolo
from scenekit.errors import DataError

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore:.*skipped .* as invalid:UserWarning")]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Any JSON value: the wrong type for every field in turn.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


def loads_or_data_error(read, *args, **kwargs):
    """The property: a valid file loads into a Dataset, an invalid one raises DataError, nothing else."""
    try:
        dataset = read(*args, **kwargs)
    except DataError:
        return None
    assert isinstance(dataset, Dataset)
    return dataset


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A small valid dataset written in the three formats (images included, so the readers can open them)."""
    root = tmp_path_factory.mktemp("valid")
    world = make_world(3, seed=7, image_size=64, min_objects=1, max_objects=3)
    coco_json = write_coco(world, root / "coco" / "instances.json", image_dir=root / "coco" / "images")
    write_voc(world, root / "voc", split="train")
    yaml_path = write_yolo(world, root / "yolo", split="train")
    return {"coco": Path(coco_json), "voc": root / "voc", "yolo": Path(yaml_path)}


def fresh_copy(source: Path, tmp: Path) -> Path:
    target = tmp / source.name
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
    return target


def test_valid_files_load(sources):
    assert len(read_coco(sources["coco"], check_images=False)) == 3
    assert len(read_voc(sources["voc"], split="train", check_images=False)) == 3
    assert len(read_yolo(sources["yolo"], split="train")) == 3


# ------------------------------------------------------------------------------------------------ COCO
def json_paths(value, prefix=()):
    """Every path to a field of the COCO dict, so a mutation can hit any of them."""
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from json_paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value[:2]):
            yield from json_paths(inner, prefix + (index,))


@pytest.fixture(scope="module")
def coco_dict(sources):
    return json.loads(sources["coco"].read_text())


@FUZZ
@given(data=st.data(), replacement=json_values, action=st.sampled_from(["replace", "delete"]),
       skip_invalid=st.booleans())
def test_coco_field_of_wrong_type_or_missing_is_data_error(sources, coco_dict, tmp_path, data, replacement,
                                                           action, skip_invalid):
    paths = [p for p in json_paths(coco_dict) if p]
    path = data.draw(st.sampled_from(paths))
    mutated = copy.deepcopy(coco_dict)
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    target = tmp_path / "instances.json"
    target.write_text(json.dumps(mutated))
    loads_or_data_error(read_coco, target, sources["coco"].parent, check_images=False, skip_invalid=skip_invalid)


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True), noise=st.binary(max_size=12))
def test_coco_truncated_or_garbled_json_is_data_error(sources, tmp_path, cut, noise):
    text = sources["coco"].read_bytes()
    target = tmp_path / "instances.json"
    target.write_bytes(text[:int(cut * len(text))] + noise)
    loads_or_data_error(read_coco, target, sources["coco"].parent, check_images=False)


# ------------------------------------------------------------------------------------------------ VOC
xml_garbage = st.sampled_from(["", "abc", "-5", "nan", "inf", "1e400", "<b>", "&amp;", "12.5.3", " 7 ", "0", "1"])


@FUZZ
@given(data=st.data(), garbage=xml_garbage, action=st.sampled_from(["text", "delete", "truncate", "rename"]))
def test_voc_xml_garbage_is_data_error(sources, tmp_path, data, garbage, action):
    import xml.etree.ElementTree as ElementTree

    root = fresh_copy(sources["voc"], tmp_path)
    xml_file = sorted((root / "Annotations").glob("*.xml"))[0]
    text = xml_file.read_text()
    if action == "truncate":
        xml_file.write_text(text[:data.draw(st.integers(0, len(text) - 1))])
    else:
        tree = ElementTree.fromstring(text)
        elements = [e for e in tree.iter() if e is not tree]
        element = data.draw(st.sampled_from(elements))
        if action == "text":
            element.text = garbage
        elif action == "rename":
            element.tag = data.draw(st.sampled_from(["x", "object", "bndbox", "size", "name"]))
        else:
            for parent in tree.iter():
                if element in list(parent):
                    parent.remove(element)
                    break
        xml_file.write_text(ElementTree.tostring(tree, encoding="unicode"))
    loads_or_data_error(read_voc, root, split="train", check_images=False)


@FUZZ
@given(lines=st.lists(st.text(alphabet="0123456789abc ./_-\t", max_size=10), max_size=4))
def test_voc_split_file_garbage_is_data_error(sources, tmp_path, lines):
    root = fresh_copy(sources["voc"], tmp_path)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(lines))
    loads_or_data_error(read_voc, root, split="train", check_images=False)


# ------------------------------------------------------------------------------------------------ YOLO
label_fields = st.sampled_from(["0", "1", "5", "-1", "7", "0.5", "nan", "inf", "-inf", "1e9", "x", "", "0.5.1",
                                "2.0", "1e-3", "-0.2", "1.5"])


@FUZZ
@given(rows=st.lists(st.lists(label_fields, min_size=0, max_size=7).map(" ".join), max_size=4),
       skip_invalid=st.booleans())
def test_yolo_label_lines_with_wrong_columns_or_numbers_are_data_error(sources, tmp_path, rows, skip_invalid):
    root = fresh_copy(sources["yolo"].parent, tmp_path)
    label = sorted(root.rglob("labels/**/*.txt"))[0]
    label.write_text("\n".join(rows) + "\n")
    loads_or_data_error(read_yolo, root / sources["yolo"].name, split="train", skip_invalid=skip_invalid)


yaml_lines = st.sampled_from(["path: .", "train: images/train", "names: [a, b", "names:", "  - circle",
                              "  0: circle", "nc: x", "nc: 2", "names: {0: a, 1: b}", ": :", "- - -", "\t", "'",
                              'names: "unterminated', "train: [", "val: images/none", "# comment", "names: []"])


@FUZZ
@given(lines=st.lists(yaml_lines, max_size=6), cut=st.floats(0, 1))
def test_yolo_bad_yaml_is_data_error(sources, tmp_path, lines, cut):
    root = fresh_copy(sources["yolo"].parent, tmp_path)
    yaml_file = root / sources["yolo"].name
    original = yaml_file.read_text()
    yaml_file.write_text(original[:int(cut * len(original))] + "\n" + "\n".join(lines))
    loads_or_data_error(read_yolo, yaml_file, split="train")
