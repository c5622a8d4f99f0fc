"""The training stage shared by every detector: view, engine, metrics, plots, distributed worker and the driver.

One file one job, as in torchvision's detection references: :mod:`.view` builds the
training view from the Delta tables, :mod:`.engine` trains and predicts,
:mod:`.metrics` scores predictions, :mod:`.plots` draws them, :mod:`.worker` is what
each DDP process runs, and :mod:`.run` is the driver that ties them to MLflow.
"""
