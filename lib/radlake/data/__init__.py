"""Training data: labels and splits tables, the training view, the Parquet cache, the torch loader, transforms.

- :mod:`.labels` / :mod:`.splits`: the ``annotations`` and ``splits`` Delta tables.
- :mod:`.view`: a detector's training view at pinned table versions.
- :mod:`.crops`: the ``vertebra_crops`` table the Schmorl's-node detector trains on.
- :mod:`.converter` / :mod:`.loader`: petastorm's ``make_spark_converter`` and
  ``make_torch_dataloader``, rebuilt on Spark and pyarrow; :mod:`.cache_entry`, what a cache
  entry is on disk (the converter writes it, the loader reads it).
- :mod:`.transforms`: decode, normalise, resample and augment one sample.

May import: the foundation, :mod:`radlake.dicom`, :mod:`radlake.ingest.schema` (the ``images``
table's columns) and :mod:`radlake.models` (the shared preprocessing, the level names, the
pyfunc UDF that cuts the crops). Import names from their
module; ``import radlake.data.labels`` (CLI, Spark executors) does not import torch.
"""
