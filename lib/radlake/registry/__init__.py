"""The model registry: registering training runs, promotion with aliases (never stages), versions, leaderboards.

- :mod:`.promote`: register a run's model as ``challenger`` and make it ``champion`` when it
  passes the detector's floors and beats the current champion on the frozen test split.
- :mod:`.versions`: the versions of a registered model and their aliases, compared.
- :mod:`.leaderboard`: an experiment's runs ranked by a metric, as a table and a plot.

Resolving a model URI is :mod:`radlake.models.resolve` (training, crops and scoring need it too).

May import: the foundation, :mod:`radlake.models` and :mod:`radlake.train` (metrics, the
detectors' definitions).
"""
