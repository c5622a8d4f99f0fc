# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Explore the archive
# MAGIC
# MAGIC What the ingested DICOM archive holds: studies and series stacks, series by plane, transfer
# MAGIC syntaxes, what went to quarantine and why, and thumbnails of a few stacks (central slice,
# MAGIC rendered on the executors).
# MAGIC
# MAGIC Reads the tables written by `radlake ingest` (job `radlake_ingest`). Parameters are the widgets
# MAGIC above; run locally as plain Python:
# MAGIC `python notebooks/01_explore_archive.py --conf local --thumbnails 8 --plane SAGITTAL`.

# COMMAND ----------

# MAGIC %pip install --quiet ..

# COMMAND ----------

# MAGIC %restart_python

# COMMAND ----------

from radlake.workflow import explore
from radlake.workflow.notebook import Notebook, Widget

nb = Notebook.start(
    "01_explore_archive",
    [
        Widget("thumbnails", "8", label="thumbnails (series stacks)"),
        Widget("plane", "SAGITTAL", choices=("SAGITTAL", "CORONAL", "AXIAL", "OBLIQUE", "UNKNOWN")),
    ],
)
spark, config = nb.spark, nb.config

# COMMAND ----------

# MAGIC %md ## What is in the archive

# COMMAND ----------

nb.show(explore.archive_counts(spark, config), title="archive")

# COMMAND ----------

nb.show(explore.series_by_plane(spark, config), title="series stacks by plane")

# COMMAND ----------

nb.show(explore.transfer_syntaxes(spark, config), title="transfer syntaxes")

# COMMAND ----------

# MAGIC %md ## Quarantine: what could not be read, and why
# MAGIC Nothing in quarantine stops an ingest; each row names the file (and archive member) and the error.

# COMMAND ----------

nb.show(explore.quarantine_reasons(spark, config), title="quarantine reasons")

# COMMAND ----------

# MAGIC %md ## Thumbnails
# MAGIC The central slice of a few series stacks of the chosen plane (window: 1st–99th percentile).

# COMMAND ----------

rows = explore.thumbnails(spark, config, count=int(nb.params["thumbnails"]), planes=[nb.params["plane"]]).collect()
if rows:
    nb.show(explore.thumbnail_sheet(rows), title=f"thumbnails {nb.params['plane']}")
else:
    print(f"No {nb.params['plane']} frame in table 'images'.")
