# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Review findings
# MAGIC
# MAGIC What batch scoring (`radlake score`, job `radlake_score`) found: how much of the archive each
# MAGIC model pair scored, the series with Schmorl's nodes (strongest first), nodes per vertebral level,
# MAGIC and one study's sagittal slices with the boxes drawn.
# MAGIC
# MAGIC `vertebra_model` / `schmorl_model` empty: the pair that scored last. `study` empty: the study
# MAGIC with the strongest finding. Locally: `python notebooks/03_review_findings.py --conf local`.

# COMMAND ----------

# MAGIC %pip install --quiet ..

# COMMAND ----------

# MAGIC %restart_python

# COMMAND ----------

from PIL import Image

from radlake.score.review import write_review
from radlake.workflow import explore
from radlake.workflow.notebook import Notebook, Widget

nb = Notebook.start(
    "03_review_findings",
    [
        Widget("vertebra_model", "", label="vertebra model URI (empty: last scored)"),
        Widget("schmorl_model", "", label="Schmorl's model URI (empty: last scored)"),
        Widget("study", "", label="StudyInstanceUID to draw (empty: strongest finding)"),
        Widget("slices", "3", label="central slices drawn per series"),
    ],
)
spark, config = nb.spark, nb.config
if bool(nb.params["vertebra_model"]) != bool(nb.params["schmorl_model"]):
    raise ValueError("Give both model URIs (vertebra_model and schmorl_model) or neither.")
pair = (
    (nb.params["vertebra_model"], nb.params["schmorl_model"])
    if nb.params["vertebra_model"]
    else explore.latest_model_pair(spark, config)
)
print(f"model pair: {pair[0]} + {pair[1]}")

# COMMAND ----------

# MAGIC %md ## Predictions over images: what each model pair scored

# COMMAND ----------

nb.show(explore.scoring_coverage(spark, config), title="scoring coverage")

# COMMAND ----------

# MAGIC %md ## Study findings of the pair (one row per series stack)

# COMMAND ----------

findings = explore.findings_of_pair(spark, config, pair)
nb.show(findings, title="study findings")

# COMMAND ----------

# MAGIC %md ## Schmorl's nodes per level

# COMMAND ----------

levels = explore.level_counts(spark, config, pair).toPandas()  # one row per level: small
nb.show(levels, title="per-level counts", rows=len(levels))
nb.show(explore.level_counts_figure(levels), title="nodes per level")

# COMMAND ----------

# MAGIC %md ## One study, drawn (vertebrae gold with level and score, nodes magenta)

# COMMAND ----------

study = nb.params["study"] or next(iter(r.study_instance_uid for r in findings.limit(1).collect()), None)
if study is None:
    print("No study was scored by this pair.")
else:
    review = write_review(
        spark,
        config,
        study_uid=study,
        out_dir=nb.out_dir / "review" / study,
        model_pair=pair,
        max_slices=int(nb.params["slices"]),
    )
    print(f"study {study}: {review.frames} slices, {review.vertebrae} vertebrae, {review.schmorl_nodes} nodes drawn")
    for path in review.files:
        nb.show(Image.open(path), title=f"review {path.rsplit('/', 1)[-1][:-4]}")
