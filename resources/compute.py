"""Bundle mutator: the ingest and score jobs on serverless compute when ``--var compute=serverless``.

``databricks.yml`` runs every job on a job cluster (``compute: classic``, the default).
Jobs tagged ``radlake_compute: ${var.compute}`` (``radlake_ingest`` and ``radlake_score``)
can run on serverless compute instead; the CLI runs :func:`serverless_compute` on every
job while it loads the bundle (``python.mutators`` in ``databricks.yml``), and with
``compute: serverless`` it turns such a job's tasks from ``job_cluster_key`` and
``libraries`` to the ``environment_key`` of the job's environment (whose dependencies
install the radlake wheel) and drops the job's clusters. Other jobs are never changed:
training needs a dedicated GPU cluster (TorchDistributor needs a SparkContext).

Only what YAML already holds is reused, so every path (the wheel, the task files)
stays relative to ``databricks.yml``. Needs ``databricks-bundles`` in the Python that
runs ``databricks bundle`` (the project's ``test`` extra installs it).

Example
-------
    databricks bundle deploy -t prod --var compute=serverless
"""

from __future__ import annotations

from dataclasses import replace

from databricks.bundles.core import Bundle, job_mutator
from databricks.bundles.jobs import Job

#: The tag that marks a job whose compute follows ``var.compute``; its value is ``${var.compute}``.
COMPUTE_TAG = "radlake_compute"
#: Values of ``var.compute``.
COMPUTES = ("classic", "serverless")


@job_mutator
def serverless_compute(bundle: Bundle, job: Job) -> Job:
    """``job`` on its serverless environment if it carries :data:`COMPUTE_TAG` resolving to ``serverless``.

    Every task that has a ``job_cluster_key`` gets the job's only environment instead and
    loses its ``libraries`` (serverless tasks install what the environment lists).

    Raises
    ------
    ValueError
        If the tag resolves to something other than :data:`COMPUTES`, or a serverless job
        defines not exactly one environment.
    """
    tag = (job.tags or {}).get(COMPUTE_TAG)
    if tag is None:
        return job
    compute = bundle.resolve_variable(tag)
    if compute not in COMPUTES:
        raise ValueError(f"Variable 'compute' must be one of {COMPUTES}, got {compute!r}.")
    if compute == "classic":
        return job
    environments = list(job.environments or [])
    if len(environments) != 1:
        raise ValueError(
            f"Job {job.name!r} must define exactly one environment to run serverless, got {len(environments)}."
        )
    key = environments[0].environment_key
    tasks = [
        replace(task, job_cluster_key=None, libraries=[], environment_key=key) if task.job_cluster_key else task
        for task in job.tasks or []
    ]
    return replace(job, tasks=tasks, job_clusters=[])
