"""The run folder of `scenekit train`: which files a run owns, and never writing one run over another.

A folder holds a run when it has one of MARKERS (a checkpoint or the metrics log). A new run refuses such a
folder unless told to continue it (`resume`) or to replace it (`exist_ok`, which removes that run's files,
RUN_FILES, and nothing else); when the folder was not chosen by the user (the default `runs/MODEL`), the new run
goes to the first free `runs/MODEL-2`, `runs/MODEL-3`, ... instead, and says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from scenekit.errors import DataError

MARKERS = ("last.pt", "best.pt", "metrics.csv")
# Everything a training run writes into its folder (caches such as R-CNN's cache/ are reusable, and kept).
# Code that writes more files into the run folder names them here, so `exist_ok` removes them too.
RUN_FILES = MARKERS + ("config.json", "curves.png", "split.json", "skipped_train.json", "skipped_val.json",
                       "finetuned.pt",
                       "metrics.csv.tmp", "tensorboard")


def run_files(folder) -> list[str]:
    """The MARKERS present in `folder`: non-empty when it holds a run."""
    return [name for name in MARKERS if (Path(folder) / name).exists()]


def clear_run(folder) -> list[str]:
    """Remove the previous run's files (RUN_FILES, and checkpoint temporaries) from `folder`; return their names."""
    folder = Path(folder)
    doomed = [folder / name for name in RUN_FILES if (folder / name).exists()]
    doomed += sorted(folder.glob(".*.pt.*.tmp"))        # a checkpoint write that was killed half-way
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return [path.name for path in doomed]


def choose_run_folder(out: str | None, default: str, *, resume: bool = False,
                      exist_ok: bool = False) -> tuple[Path, str | None]:
    """(the folder this run writes to, a note for the user or None); see the module docstring.

    `out` is the folder the user asked for (None: `default`). DataError when it holds a run and neither
    `resume` nor `exist_ok` says what to do with it."""
    if resume and exist_ok:
        raise DataError("--resume continues the run in OUT and --exist-ok replaces it: give one of them",
                        field="resume")
    folder = Path(out or default)
    found = run_files(folder)
    if not found or resume:
        return folder, None
    if exist_ok:
        removed = clear_run(folder)
        return folder, f"--exist-ok: removed the previous run's files from {folder}: {', '.join(removed)}"
    if out is None:
        number = 2
        while run_files(f"{default}-{number}"):
            number += 1
        fresh = Path(f"{default}-{number}")
        return fresh, (f"{folder} holds a previous run; this one goes to {fresh} (--resume continues {folder}, "
                       f"--out {folder} --exist-ok replaces it)")
    raise DataError(f"holds a previous run ({', '.join(found)}); continue it with --resume, replace it with "
                    "--exist-ok, or choose another --out (in Python: scenekit.train(..., resume=True | "
                    "exist_ok=True | out=...))", file=str(folder))
