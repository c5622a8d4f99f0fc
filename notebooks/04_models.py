# Databricks notebook source
# MAGIC %md
# MAGIC # 04 · Models: compare registered versions, move the champion by hand
# MAGIC
# MAGIC Every registered version of a detector (Unity Catalog on Databricks, the local registry
# MAGIC elsewhere) with its aliases, the promotion gate's verdict and its training run's test metrics.
# MAGIC
# MAGIC Promotion normally happens in the training job (a challenger becomes `champion` only if it beats
# MAGIC the champion on the same frozen test split). To override it, set `version` (and `reason`): the
# MAGIC alias moves and the move is recorded on the version (tag `radlake.alias_history`).
# MAGIC Locally: `python notebooks/04_models.py --detector vertebra --version 2 --reason "reader study"`.

# COMMAND ----------

# MAGIC %pip install --quiet ..

# COMMAND ----------

# MAGIC %restart_python

# COMMAND ----------

from matplotlib.figure import Figure

from radlake.registry.versions import model_versions, move_alias
from radlake.train.run import get_stage
from radlake.workflow.notebook import Notebook, Widget

nb = Notebook.start(
    "04_models",
    [
        Widget("detector", "vertebra", choices=("vertebra", "schmorl")),
        Widget("version", "", label="version to point the alias at (empty: compare only)"),
        Widget("alias", "champion", label="alias to move"),
        Widget("reason", "", label="why (required to move an alias)"),
    ],
)
config = nb.config
detector = nb.params["detector"]
stage = get_stage(detector)
name = getattr(config.models, detector)

# COMMAND ----------

shown = [f"test_{stage.primary_metric}", f"test_{stage.secondary_metric}", "e2e_froc_sens_at_1fp", "e2e_ap_30"]
versions = model_versions(config, detector, metrics=shown)
nb.show(versions, title=f"{name}: registered versions", rows=50)

# COMMAND ----------

# MAGIC %md ## Test metrics per version (primary metric and the tie-breaker)

# COMMAND ----------

metrics = [m for m in (f"test_{stage.primary_metric}", f"test_{stage.secondary_metric}") if m in versions.columns]
fig = Figure(figsize=(6, 3))
ax = fig.subplots()
ordered = versions.sort_values("version")
width = 0.8 / max(1, len(metrics))
for i, metric in enumerate(metrics):
    ax.bar(ordered["version"] + (i - (len(metrics) - 1) / 2) * width, ordered[metric], width, label=metric)
for _, row in ordered.iterrows():
    if row["aliases"]:
        ax.annotate(row["aliases"], (row["version"], 0.02), ha="center", rotation=90, fontsize=8)
ax.set_xticks(ordered["version"])
ax.set_xlabel("version")
ax.set_ylim(0, 1)
ax.legend(fontsize=8)
ax.set_title(name)
nb.show(fig, title=f"{detector} versions")

# COMMAND ----------

# MAGIC %md ## Move an alias by hand (widgets `version`, `alias`, `reason`)

# COMMAND ----------

if nb.params["version"]:
    move = move_alias(config, detector, nb.params["version"], alias=nb.params["alias"], reason=nb.params["reason"])
    nb.show(move.as_dict(), title="alias moved")
    nb.show(model_versions(config, detector)[["version", "aliases", "promoted"]], title="aliases now")
else:
    print("No version given: nothing moved.")
