"""scenekit: visual scene understanding methods, implemented faithfully to their papers.

    import scenekit

    model = scenekit.load("runs/yolo2/best.pt")      # a scenekit.Model (scenekit/api.py)
    results = model.predict(["photo.jpg"])           # one scenekit.Result per image: boxes, masks, captions, ...
    run = scenekit.train("yolo2", data="voc:VOCdevkit/VOC2007", epochs=10)

The four names are scenekit.api's, imported on first use, so `import scenekit` stays cheap (no torch).
"""

__version__ = "0.1.0"
__all__ = ["load", "train", "Model", "Result"]


def __getattr__(name: str):
    if name in __all__:
        from scenekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'scenekit' has no attribute {name!r}")
