"""What a loader cache entry is on disk: its Parquet files and the metadata file that completes it.

:func:`radlake.data.converter.make_spark_converter` writes entries; the loader
(:mod:`radlake.data.loader`) reads them. An entry is the folder ``<cache_dir>/<key>``;
it is complete once :data:`META_FILE` is in it and every file that file lists exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["META_FILE", "entry_meta", "read_meta"]

#: Metadata file of a complete cache entry.
META_FILE = "_radlake_cache.json"


def entry_meta(path: Path) -> dict[str, Any] | None:
    """The metadata of a complete entry at ``path``, or ``None`` if it is missing or incomplete."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        if all((path / f["file"]).is_file() for f in meta["files"]):
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata (``_radlake_cache.json``) of the complete cache entry at ``path``.

    Keys: ``key``, ``source_versions``, ``schema`` (Spark schema JSON), ``num_rows``,
    ``created_at`` (ISO 8601, UTC) and ``files`` (``[{"file": name, "rows": [rows per row group]}]``).

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a complete cache entry.
    """
    meta = entry_meta(Path(path))
    if meta is None:
        raise FileNotFoundError(f"{path} is not a complete radlake loader cache entry (missing {META_FILE} or files)")
    return meta
