"""What a run reports: the one base of the ``*Summary`` records and their JSON-ready form.

Every record a stage hands back (``IngestSummary``, ``ScoreSummary`` ...) is a dataclass
that derives from :class:`Summary`; its :meth:`Summary.as_dict` is what the CLI prints and
writes with ``--summary-json``, what MLflow run artifacts and tags carry, and what the
pipeline passes from step to step.

May import: nothing of radlake (every stage may import it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

__all__ = ["Summary", "json_ready"]


def json_ready(value: Any) -> Any:
    """``value`` as plain JSON values: dataclasses and mappings as dicts, tuples as lists,
    enums as their values, paths as strings; anything else as it is.

    ``json.dumps`` writes the result exactly as it writes ``value`` (a ``str`` enum and its
    value, a tuple and a list are written alike).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_ready(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {json_ready(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


class Summary:
    """Base of the report records (dataclasses): :meth:`as_dict` gives their JSON-ready form."""

    def as_dict(self) -> dict[str, Any]:
        """The fields in order, as plain JSON values (see :func:`json_ready`)."""
        return json_ready(self)
