"""conf/dev.yml and conf/prod.yml agree with what databricks.yml passes to each target's tasks.

A task runs ``--conf <var.conf>`` (``dev`` or ``prod``; the serverless targets use their twin's) and overrides the storage settings with the bundle's variables; the
conf file alone must still name the same catalog, schema, Volumes, secret and registered models, so
that a notebook or a one-off run with ``--conf dev`` sees the tables and models the jobs write.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radlake.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _variables(target: str) -> dict[str, str]:
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text())
    values = {name: spec.get("default") for name, spec in bundle["variables"].items()}
    values.update(bundle["targets"][target].get("variables") or {})
    return values


@pytest.mark.parametrize("target", ["dev", "prod", "dev_serverless", "prod_serverless"])
def test_conf_file_names_what_the_bundle_passes(target):
    v = _variables(target)
    assert v["conf"] == target.removesuffix("_serverless")
    config = load_config(str(REPO / "conf" / f"{v['conf']}.yml"))
    assert config.environment == v["conf"]
    assert (config.storage.catalog, config.storage.schema_) == (v["catalog"], v["schema"])
    assert config.storage.volume == v["work_volume_path"]
    assert config.ingest.archive == v["archive_volume_path"]
    assert (config.ingest.deid.secret_scope, config.ingest.deid.secret_key) == (
        v["deid_secret_scope"],
        v["deid_secret_key"],
    )
    assert config.models.vertebra == f"{v['catalog']}.{v['schema']}.vertebra_detector"
    assert config.models.schmorl == f"{v['catalog']}.{v['schema']}.schmorl_detector"
    assert (config.mlflow.tracking_uri, config.mlflow.registry_uri) == ("databricks", "databricks-uc")
    for path in (config.storage.volume, config.ingest.archive):
        assert path.startswith(f"/Volumes/{v['catalog']}/{v['schema']}/")
