"""Data: the in-memory record, readers and writers of COCO / VOC / YOLO, the generated world, transforms.

    from scenekit.data import load_data, save_data
    dataset = load_data("coco:annotations/instances_val2017.json")
    save_data(dataset, "voc:out/VOC")
"""

from scenekit.data.records import Dataset, Question, Record
from scenekit.data.sources import format_statistics, load_data, parse_spec, save_data, statistics

__all__ = ["Dataset", "Question", "Record", "format_statistics", "load_data", "parse_spec", "save_data",
           "statistics"]
