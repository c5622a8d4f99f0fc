"""Training shared by every detector, one file one job (as torchvision's detection references).

- :mod:`.run`: the driver: pinned data, the MLflow run, TorchDistributor or local processes.
- :mod:`.worker`: what each DDP process runs; :mod:`.engine`: one epoch, predictions.
- :mod:`.metrics` / :mod:`.plots`: scoring predictions and drawing them.
- :mod:`.schmorl`: the Schmorl's-node detector's own inputs (crops of a pinned vertebra model).
- :mod:`.space` / :mod:`.sweep`: a sweep's search space and its trials (the sweep itself is
  :mod:`radlake.workflow.sweep`); :mod:`.reproduce`: retraining a logged run.

May import: the foundation, :mod:`radlake.models` and :mod:`radlake.data`.
"""
