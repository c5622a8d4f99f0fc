"""Detection models: backbones, the torchvision FCOS detector, preprocessing, level decoding, crops,
the MLflow pyfunc and its input (:mod:`.model_input`: ``images`` rows as frames holding their values),
and resolving registered model URIs.

Coordinates are pixels of the source frame unless a name says otherwise; boxes are
``xyxy`` (x = column, y = row, origin at the top-left corner of the image).

May import: :mod:`radlake.errors`, :mod:`radlake.spark` and :mod:`radlake.dicom` (no tables, no training).
"""
