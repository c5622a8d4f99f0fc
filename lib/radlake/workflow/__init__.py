"""Multi-step workflows over the stages.

- :mod:`.pipeline`: ``radlake pipeline``, the steps as child MLflow runs; :mod:`.demo`: ``make demo``.
- :mod:`.evaluate` / :mod:`.evaluation_plots`: ``radlake evaluate``, external validation.
- :mod:`.sweep`: ``radlake sweep``: a study of trainings, the best registered and gated.
- :mod:`.explore` / :mod:`.notebook`: what the notebooks show; :mod:`.task_values`: Databricks task values.
- :mod:`.class_archive`: the JVM class archive that ``make setup`` builds (its workload is an ingest).

May import: every stage below it.
"""
