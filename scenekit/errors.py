"""Errors raised at scenekit's boundaries (files, CLI, HTTP).

Every error about bad input names *where* the problem is: the file, the record (an id or an index) and the
field, so a user can fix their data without reading a stack trace.
"""

from __future__ import annotations


class ScenekitError(Exception):
    """Base class of scenekit's own errors; the CLI prints these as one line and exits non-zero."""


class DataError(ScenekitError, ValueError):
    """Bad input data: a malformed annotation file, a corrupt image, an invalid box.

    >>> str(DataError("box has negative width", file="a.json", record="annotation id 7", field="bbox"))
    'a.json: annotation id 7: field bbox: box has negative width'
    """

    def __init__(self, message: str, *, file: str | None = None, record: str | None = None,
                 field: str | None = None):
        self.file, self.record, self.field, self.reason = file, record, field, message
        parts = [str(p) for p in (file,) if p]
        if record:
            parts.append(str(record))
        if field:
            parts.append(f"field {field}")
        parts.append(message)
        super().__init__(": ".join(parts))
