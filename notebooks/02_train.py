# Databricks notebook source
# MAGIC %md
# MAGIC # 02 · Train a detector
# MAGIC
# MAGIC Interactive training of either detector with the same configuration and code as the job
# MAGIC `radlake_train` and `radlake train`: the tables' versions are pinned, the run is tracked in
# MAGIC MLflow (params, per-epoch metrics, plots, data versions, the model), and on request the model
# MAGIC is registered and goes through the promotion gate (`challenger`, `champion` if it wins).
# MAGIC
# MAGIC Settings come from the configuration; change any with the `set` widget, e.g.
# MAGIC `train.vertebra.epochs=10; train.vertebra.learning_rate=0.001`.
# MAGIC
# MAGIC On Databricks attach a GPU ML-runtime cluster: `conf/dev.yml` and `conf/prod.yml` train with one DDP
# MAGIC process per GPU across the workers (`train.*.num_processes`, `use_gpu`, `local_mode: false`). On a
# MAGIC single-node cluster set e.g. `train.vertebra.local_mode=true; train.vertebra.num_processes=1`.
# MAGIC Locally: `python notebooks/02_train.py --detector vertebra --set "train.vertebra.epochs=1"`.

# COMMAND ----------

# MAGIC %pip install --quiet ..

# COMMAND ----------

# MAGIC %restart_python

# COMMAND ----------

import mlflow

from radlake.registry.promote import register_and_promote
from radlake.train.run import get_stage, train_detector
from radlake.workflow.notebook import Notebook, Widget

nb = Notebook.start(
    "02_train",
    [
        Widget("detector", "vertebra", choices=("vertebra", "schmorl")),
        Widget("run_name", "", label="run name (default notebook-<detector>)"),
        Widget("register", "no", choices=("no", "yes"), label="register and promote"),
    ],
)
spark, config = nb.spark, nb.config
detector = nb.params["detector"]
stage = get_stage(detector)

# COMMAND ----------

nb.show(getattr(config.train, detector).model_dump(mode="json"), title=f"train.{detector}")

# COMMAND ----------

result = train_detector(
    spark,
    config,
    detector,
    run_name=nb.params["run_name"] or f"notebook-{detector}",
    tags={"radlake.notebook": "02_train"},
)
nb.show(
    {
        "run_id": result.run_id,
        "model_uri": result.model_uri,
        "data_versions": result.data_versions,
        "test": {k: round(v, 4) for k, v in sorted(result.metrics.items()) if k.startswith(("test_", "e2e_"))},
    },
    title="training run",
)

# COMMAND ----------

# MAGIC %md ## Training curves and test precision-recall (logged with the run)

# COMMAND ----------

from PIL import Image  # noqa: E402

for artifact in ("plots/training_curves.png", "plots/precision_recall_test.png"):
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=artifact)
    nb.show(Image.open(local), title=f"{detector} {artifact.split('/')[-1][:-4]}")

# COMMAND ----------

# MAGIC %md ## Register and promote (widget `register` = yes)

# COMMAND ----------

if nb.params["register"] == "yes":
    promotion = register_and_promote(config, stage, result.run_id)
    nb.show(promotion.as_dict(), title="promotion")
else:
    print(f"Not registered. To register: radlake promote {detector} --run-id {result.run_id}")
