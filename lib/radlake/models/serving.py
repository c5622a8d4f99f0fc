"""Requests for the detector served in real time (``mlflow models serve``, a Model Serving endpoint).

A served pyfunc takes ``POST /invocations`` with ``Content-Type: application/json`` and a
body in MLflow's ``dataframe_split`` format, plus the inference ``params``
(:data:`radlake.models.pyfunc.PARAMS`)::

    {
      "dataframe_split": {
        "columns": ["pixels", "dtype", "height", "width", "pixel_spacing"],
        "data": [["<base64 of the pixel bytes>", "float32", 384, 384, [0.7, 0.7]]]
      },
      "params": {"score_threshold": 0.3, "batch_size": 8}
    }

``pixels`` / ``dtype`` hold the frame's values (:func:`radlake.dicom.pixels.encode_pixels`);
the request builders below take ``images`` rows, stored with a rescale or an inversion, and
send their values (:func:`radlake.dicom.pixels.values_encoding`).
JSON has no bytes, so the ``binary`` column ``pixels`` travels as **base64** (the standard
alphabet, RFC 4648): MLflow's scoring server decodes every column whose signature type is
``binary`` with :func:`base64.decodebytes` before ``predict``
(``mlflow.utils.proto_json_utils.cast_df_types_according_to_schema``). ``height`` and
``width`` are integers, ``pixel_spacing`` is ``[row, column]`` in mm (or ``null``).

The answer is ``{"predictions": [{"detections": [...]}, ...]}``, one element per request
row, each detection ``{label, level, score, x0, y0, x1, y1}`` with the box ``xyxy`` in
pixels of the source frame (x = column, y = row, origin at its top-left corner), exactly
as from ``predict`` or the Spark UDF. A request the model cannot take (a missing column,
pixels that are not base64, an unknown parameter type) is answered with HTTP 400 and
``{"error_code": ..., "message": ...}``.

Example
-------
>>> import json, urllib.request                                               # doctest: +SKIP
>>> row = images.where("plane = 'SAGITTAL'").first()                          # doctest: +SKIP
>>> body = json.dumps(images_row_request(row, {"score_threshold": 0.5})).encode()  # doctest: +SKIP
>>> request = urllib.request.Request(
...     "http://127.0.0.1:5001/invocations", data=body,
...     headers={"Content-Type": "application/json"})                         # doctest: +SKIP
>>> json.load(urllib.request.urlopen(request))["predictions"][0]["detections"][0]["level"]  # doctest: +SKIP
'L3'
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

from radlake.dicom.pixels import values_encoding
from radlake.models.pyfunc import INPUT_COLUMNS, PARAMS

__all__ = ["images_request", "images_row_request"]


def images_row_request(row: Any, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body (as a ``dict``) that asks a served detector about one ``images`` row.

    Parameters
    ----------
    row
        One ``images`` row: a ``pyspark.sql.Row``, a ``dict`` or a ``pandas.Series`` with at
        least the columns :data:`radlake.models.pyfunc.INPUT_COLUMNS` (``pixels`` as
        ``bytes``/``bytearray``) and, if it has them, the transform columns of
        :data:`radlake.dicom.pixels.TRANSFORM_COLUMNS`: the request carries the frame's
        values. Other columns are left out of the request.
    params
        Inference parameters, keys from :data:`radlake.models.pyfunc.PARAMS`
        (``score_threshold``, ``batch_size``); ``None`` uses the model's defaults.

    Returns
    -------
    dict
        ``{"dataframe_split": {"columns": [...], "data": [[...]]}}`` with ``pixels``
        base64-encoded, and ``"params"`` when ``params`` is given; pass it to
        ``json.dumps`` and ``POST`` it to ``/invocations``.

    Raises
    ------
    ValueError
        If ``row`` lacks one of the input columns, or ``params`` has an unknown key.
    TypeError
        If ``row["pixels"]`` is not bytes-like.

    Examples
    --------
    >>> body = images_row_request(
    ...     {"pixels": b"\\x00<", "dtype": "uint16", "height": 1, "width": 1, "pixel_spacing": [0.5, 0.5]},
    ...     {"score_threshold": 0.4})
    >>> body["dataframe_split"]["data"]
    [['ADw=', 'uint16', 1, 1, [0.5, 0.5]]]
    >>> body["params"]
    {'score_threshold': 0.4}
    """
    return images_request([row], params)


def images_request(rows: Iterable[Any], params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Like :func:`images_row_request`, for several rows in one request (scored in one ``predict``).

    Raises
    ------
    ValueError
        If ``rows`` is empty, a row lacks an input column, or ``params`` has an unknown key.
    TypeError
        If a row's ``pixels`` is not bytes-like.
    """
    if params is not None:
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise ValueError(f"Argument 'params' has unknown key(s) {unknown}; supported: {list(PARAMS)}.")
    data = [_request_row(_as_dict(row), index) for index, row in enumerate(rows)]
    if not data:
        raise ValueError("Argument 'rows' must hold at least one row, got none.")
    body: dict[str, Any] = {"dataframe_split": {"columns": list(INPUT_COLUMNS), "data": data}}
    if params is not None:
        body["params"] = dict(params)
    return body


def _as_dict(row: Any) -> dict[str, Any]:
    if hasattr(row, "asDict"):  # pyspark.sql.Row
        return row.asDict()
    if hasattr(row, "to_dict"):  # pandas.Series
        return row.to_dict()
    if isinstance(row, Mapping):
        return dict(row)
    raise TypeError(f"Argument 'row' must be a pyspark Row, a pandas Series or a mapping, got {type(row).__name__}.")


def _request_row(row: dict[str, Any], index: int) -> list[Any]:
    missing = [c for c in INPUT_COLUMNS if c not in row]
    if missing:
        raise ValueError(
            f"Argument 'row' (row {index}) lacks column(s) {missing}; expected {list(INPUT_COLUMNS)}, "
            f"got {sorted(row)}."
        )
    pixels = row["pixels"]
    if not isinstance(pixels, bytes | bytearray | memoryview):
        raise TypeError(f"Argument 'row' (row {index}): 'pixels' must be bytes, got {type(pixels).__name__}.")
    spacing = row["pixel_spacing"]
    pixels, dtype = values_encoding({**row, "pixels": bytes(pixels)})
    return [
        base64.b64encode(pixels).decode("ascii"),
        str(dtype),
        int(row["height"]),
        int(row["width"]),
        None if spacing is None else [float(v) for v in spacing],
    ]
