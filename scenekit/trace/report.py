"""A trace on disk: one PNG per step, numbered in the order the method runs, and an index.html that lists them
with their captions.

The page is plain static HTML: relative links to the pictures beside it, inline CSS, no external resource. A
few lines of inline script only mark, once the page has loaded, how many of its pictures the browser could
decode (`<body data-loaded="7/7">`), which the tests read back from headless Chromium.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from scenekit.trace.pictures import page


@dataclass
class Step:
    """One picture of a trace: `title` says what it shows, `source` the paper and section it implements
    (e.g. "Ren et al. 2015, sec. 3.1.2"), `caption` what to read in it (numbers, stand-ins, caveats)."""

    name: str                 # file stem, e.g. "anchor-labels"
    title: str
    source: str
    picture: Image.Image      # the body; `page` adds the title line and the caption
    caption: str = ""

    @property
    def heading(self) -> str:
        return f"{self.title} ({self.source})"


def file_name(number: int, step: Step) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", step.name.lower()).strip("-") or "step"
    return f"{number:02d}-{stem}.png"


def write_trace(steps: list[Step], out_dir, heading: str, summary: str = "") -> list[Path]:
    """Save every step as `NN-name.png` in `out_dir` and write `out_dir/index.html`; returns the PNG paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for number, step in enumerate(steps, start=1):
        path = out / file_name(number, step)
        page(step.picture, step.heading, step.caption).save(path)
        written.append(path)
    (out / "index.html").write_text(index_html(steps, [p.name for p in written], heading, summary),
                                    encoding="utf-8")
    return written


STYLE = """body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
figure { margin: 2em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { margin-top: .5em; } .source { color: #555; } ol.steps li { margin: .2em 0; }"""

SCRIPT = """window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) { if (images[i].complete && images[i].naturalWidth > 0) loaded++; }
  document.body.setAttribute("data-loaded", loaded + "/" + images.length);
});"""


def index_html(steps: list[Step], files: list[str], heading: str, summary: str = "") -> str:
    """The index page: a heading, the list of steps, then each picture with its title, source and caption."""
    def e(text: str) -> str:                       # element text; attribute values also escape quotes
        return html.escape(text, quote=False)

    a = html.escape
    contents = "\n".join(f'<li><a href="#step-{k}">{e(step.title)}</a></li>' for k, step in enumerate(steps, 1))
    figures = []
    for k, (step, name) in enumerate(zip(steps, files), start=1):
        figures.append(
            f'<figure id="step-{k}">\n<img src="{a(name)}" alt="{a(step.title)}">\n'
            f'<figcaption><strong>{k}. {e(step.title)}</strong> <span class="source">({e(step.source)})</span>'
            + (f"<br>{e(step.caption)}" if step.caption else "") + "</figcaption>\n</figure>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(heading)}</title>\n'
            f"<style>\n{STYLE}\n</style>\n<script>\n{SCRIPT}\n</script>\n</head>\n<body>\n<h1>{e(heading)}</h1>\n"
            + (f"<p>{e(summary)}</p>\n" if summary else "")
            + f'<ol class="steps">\n{contents}\n</ol>\n' + "\n".join(figures) + "\n</body>\n</html>\n")
