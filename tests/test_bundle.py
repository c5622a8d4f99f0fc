"""Offline checks of databricks.yml, the Databricks Asset Bundle (no workspace, no Spark).

``databricks bundle validate`` always calls a workspace, so what can be checked here is checked
here: the bundle JSON schema (when /work/shared/databricks/bundle_schema.json or
$RADLAKE_BUNDLE_SCHEMA is present), every job through ``databricks.bundles.jobs.Job.from_dict``
with the variables of each target substituted, and what the schema cannot see: files that tasks
name, ``depends_on`` / ``job_cluster_key`` / task-value references, undefined ``${var.*}``,
duplicate task keys, target modes, and every task's arguments against radlake's own command line
and configuration schema. Each checker returns a list of problems; the negative tests feed it a
broken copy of the bundle and expect the problem to be named.

The bundle is databricks.yml plus one file per job in resources/ (``include``), loaded as the CLI
loads it (paths relative to the file that names them, a target's resources merged into the jobs,
tasks by ``task_key``). Every check runs on every target: dev and prod (ingest and score on job
clusters) and dev_serverless and prod_serverless (ingest and score on serverless environments).
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BUNDLE_FILE = REPO / "databricks.yml"
SCHEMA_FILE = Path(os.environ.get("RADLAKE_BUNDLE_SCHEMA", "/work/shared/databricks/bundle_schema.json"))

VAR_REF = re.compile(r"\$\{var\.([A-Za-z0-9_-]+)\}")
ANY_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.\-\[\]]*)\}")
TASK_VALUE_REF = re.compile(r"\{\{\s*tasks\.([A-Za-z0-9_-]+)\.values\.([A-Za-z0-9_-]+)\s*\}\}")
#: Namespaces a ``${...}`` reference may use in this bundle.
REF_NAMESPACES = ("var", "bundle", "workspace", "resources", "artifacts")
MODES = ("development", "production")
#: The targets, each twin of the one that runs ingest and score on job clusters.
SERVERLESS_TWINS = {"dev_serverless": "dev", "prod_serverless": "prod"}
#: The jobs whose compute a target chooses (job cluster or serverless environment).
SERVERLESS_JOBS = ("radlake_ingest", "radlake_score")
#: Task fields that choose where a task runs; a task sets at most one.
COMPUTE_FIELDS = ("job_cluster_key", "environment_key", "existing_cluster_id", "new_cluster")
#: What each pipeline step publishes (the outputs column of radlake.workflow.pipeline's table).
STEP_OUTPUTS = {
    "ingest": {"instances_version", "series_version", "images_version", "quarantine_version"},
    "labels": {"annotations_version", "splits_version"},
    "train_vertebra": {"vertebra_run_id", "vertebra_run_model_uri"},
    "promote_vertebra": {"vertebra_model", "vertebra_version", "vertebra_promoted"},
    "crops": {"vertebra_crops_version", "vertebra_model"},
    "train_schmorl": {"schmorl_run_id", "schmorl_run_model_uri"},
    "promote_schmorl": {"schmorl_model", "schmorl_version", "schmorl_promoted"},
    "score": {"predictions_version", "study_findings_version", "score_run_id"},
}
#: Stand-ins for what only a deployment knows.
DEPLOY_VALUES = {
    "bundle.name": "radlake",
    "workspace.file_path": "/Workspace/Users/someone@example.com/.bundle/radlake/dev/files",
    "workspace.root_path": "/Workspace/Users/someone@example.com/.bundle/radlake/dev",
    "workspace.current_user.userName": "someone@example.com",
}


# --------------------------------------------------------------------------------------- helpers


def _translate_paths(node: Any, base: Path, root: Path) -> Any:
    """``node`` with the local paths a job names (task files, wheels) made relative to ``root``.

    The CLI resolves a path relative to the file that defines it; doing the same here lets every
    check read paths relative to the repository, whichever file of ``resources/`` they came from.
    """

    def fix(path: str) -> str:
        if not isinstance(path, str) or not path.startswith("."):
            return path
        return "./" + os.path.relpath(os.path.normpath(base / path), root)

    if isinstance(node, Mapping):
        out = {}
        for key, value in node.items():
            if key == "python_file" or key == "whl":
                out[key] = fix(value)
            elif key == "dependencies" and isinstance(value, list):
                out[key] = [fix(v) for v in value]
            else:
                out[key] = _translate_paths(value, base, root)
        return out
    if isinstance(node, list):
        return [_translate_paths(v, base, root) for v in node]
    return node


#: Sequences of a job that the CLI merges by key (a target's entry updates the one with its key).
KEYED_SEQUENCES = {"tasks": "task_key", "job_clusters": "job_cluster_key", "environments": "environment_key"}


def merge(base: Any, override: Any, *, key: str = "") -> Any:
    """``override`` merged into ``base`` as the CLI merges a target or an included file.

    Mappings merge recursively; job tasks, job clusters and environments merge by their key;
    other sequences are appended; a scalar in ``override`` wins.
    """
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge(base[k], v, key=k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(override, list):
        field = KEYED_SEQUENCES.get(key)
        if field is None:
            return [*copy.deepcopy(base), *copy.deepcopy(override)]
        out = [copy.deepcopy(item) for item in base]
        for item in override:
            at = next((i for i, old in enumerate(out) if old.get(field) == item.get(field)), None)
            if at is None:
                out.append(copy.deepcopy(item))
            else:
                out[at] = merge(out[at], item)
        return out
    return copy.deepcopy(override)


def load_bundle(path: Path = BUNDLE_FILE, root: Path = REPO) -> dict:
    """databricks.yml with the files its ``include`` globs name merged in, paths relative to ``root``.

    A job defined in two files is an error, as for the CLI.
    """
    with open(path) as fh:
        bundle = _translate_paths(yaml.safe_load(fh), path.parent, root)
    for pattern in bundle.get("include") or []:
        files = sorted(path.parent.glob(pattern))
        if not files:
            raise ValueError(f"include: '{pattern}' matches no file")
        for file in files:
            with open(file) as fh:
                part = _translate_paths(yaml.safe_load(fh) or {}, file.parent, root)
            twice = set(jobs_of(bundle)) & set(jobs_of(part))
            if twice:
                raise ValueError(f"{file.name}: job(s) {sorted(twice)} already defined")
            bundle = merge(bundle, part)
    return bundle


def for_target(bundle: Mapping, target: str) -> dict:
    """The bundle as the CLI loads it with ``-t <target>``: the target's resources merged into the jobs."""
    out = copy.deepcopy(dict(bundle))
    target_spec = (bundle.get("targets") or {}).get(target)
    if target_spec is None:
        raise KeyError(f"no target '{target}'")
    out["resources"] = merge(out.get("resources") or {}, target_spec.get("resources") or {})
    out.setdefault("bundle", {})["target"] = target
    return out


def walk_strings(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string in ``node`` with its dotted location."""
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from walk_strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_strings(value, f"{where}[{i}]")


def jobs_of(bundle: Mapping) -> dict[str, dict]:
    return dict((bundle.get("resources") or {}).get("jobs") or {})


def target_variables(bundle: Mapping, target: str) -> dict[str, Any]:
    """Variable values in ``target``: the defaults, overridden by the target's ``variables``."""
    values = {name: spec.get("default") for name, spec in (bundle.get("variables") or {}).items()}
    for name, value in (((bundle.get("targets") or {}).get(target) or {}).get("variables") or {}).items():
        values[name] = value.get("default") if isinstance(value, Mapping) else value
    return values


def substitute(node: Any, values: Mapping[str, Any]) -> Any:
    """``node`` with every ``${name}`` in ``values`` replaced (a whole-string reference keeps the type)."""
    if isinstance(node, str):
        whole = ANY_REF.fullmatch(node)
        if whole and whole.group(1) in values:
            return values[whole.group(1)]
        return ANY_REF.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), node)
    if isinstance(node, Mapping):
        return {k: substitute(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, values) for v in node]
    return node


def resolved_values(bundle: Mapping, target: str) -> dict[str, Any]:
    values = {f"var.{k}": v for k, v in target_variables(bundle, target).items()}
    values.update(DEPLOY_VALUES)
    values["bundle.target"] = target
    return values


def targets_of(bundle: Mapping) -> list[str]:
    """The target a bundle was loaded for (:func:`for_target`), else all its targets."""
    loaded = (bundle.get("bundle") or {}).get("target")
    return [loaded] if loaded else list(bundle.get("targets") or {})


def task_arguments(task: Mapping) -> list[str]:
    spt = task.get("spark_python_task") or task.get("python_wheel_task") or {}
    return [str(p) for p in spt.get("parameters") or []]


def option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == option]


def upstream(tasks_by_key: Mapping[str, Mapping], key: str) -> set[str]:
    """Every task that ``key`` depends on, directly or not."""
    seen: set[str] = set()
    todo = [d.get("task_key") for d in tasks_by_key.get(key, {}).get("depends_on") or []]
    while todo:
        k = todo.pop()
        if k in seen or k not in tasks_by_key:
            continue
        seen.add(k)
        todo.extend(d.get("task_key") for d in tasks_by_key[k].get("depends_on") or [])
    return seen


def job_file_command(path: Path) -> list[str]:
    """The constant subcommand a jobs/*.py file puts before ``sys.argv[1:]`` (``main(["train", "vertebra", *...])``)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.List):
                return [e.value for e in arg.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


# -------------------------------------------------------------------------------------- checkers


def check_structure(bundle: Mapping, root: Path = REPO) -> list[str]:
    """Task keys, depends_on, job clusters, task files, wheel libraries and task-value references."""
    problems: list[str] = []
    artifacts = bundle.get("artifacts") or {}
    wheel_dirs = [
        os.path.normpath(a.get("path", "."))
        for a in artifacts.values()
        if isinstance(a, Mapping) and a.get("type") == "whl"
    ]
    if not wheel_dirs:
        problems.append("artifacts: no `type: whl` artifact")
    for job_name, job in jobs_of(bundle).items():
        tasks = job.get("tasks") or []
        keys = [t.get("task_key") for t in tasks]
        for key in sorted({k for k in keys if keys.count(k) > 1}):
            problems.append(f"{job_name}: duplicate task_key '{key}'")
        by_key = {t.get("task_key"): t for t in tasks}
        clusters = [c.get("job_cluster_key") for c in job.get("job_clusters") or []]
        for key in sorted({k for k in clusters if clusters.count(k) > 1}):
            problems.append(f"{job_name}: duplicate job_cluster_key '{key}'")
        environments = {e.get("environment_key"): e.get("spec") or {} for e in job.get("environments") or []}
        if len(environments) != len(job.get("environments") or []):
            problems.append(f"{job_name}: duplicate environment_key in environments")
        for task in tasks:
            key = task.get("task_key")
            for dep in task.get("depends_on") or []:
                if dep.get("task_key") not in by_key:
                    problems.append(f"{job_name}.{key}: depends_on unknown task '{dep.get('task_key')}'")
            if key in upstream(by_key, key):
                problems.append(f"{job_name}.{key}: depends on itself (cycle)")
            cluster = task.get("job_cluster_key")
            if cluster is not None and cluster not in clusters:
                problems.append(f"{job_name}.{key}: job_cluster_key '{cluster}' is not in job_clusters")
            environment = task.get("environment_key")
            if environment is not None and environment not in environments:
                problems.append(f"{job_name}.{key}: environment_key '{environment}' is not in environments")
            chosen = [f for f in COMPUTE_FIELDS if task.get(f) is not None]
            if len(chosen) > 1:
                problems.append(f"{job_name}.{key}: more than one compute ({', '.join(chosen)})")
            if environment is not None and task.get("libraries"):
                problems.append(f"{job_name}.{key}: libraries on a serverless task (list them in its environment)")
            conf = option_values(task_arguments(task), "--conf")
            if conf and not conf[0].endswith((".yml", ".yaml")) and cluster in clusters:
                # a configuration by name is looked up in $RADLAKE_CONF_DIR, else ./conf of an unknown cwd
                spec = (job.get("job_clusters") or [])[clusters.index(cluster)].get("new_cluster") or {}
                if "RADLAKE_CONF_DIR" not in (spec.get("spark_env_vars") or {}):
                    problems.append(
                        f"{job_name}.{key}: --conf {conf[0]} but job cluster '{cluster}' sets no RADLAKE_CONF_DIR"
                    )
            if conf and not conf[0].endswith((".yml", ".yaml")) and environment is not None:
                problems.append(f"{job_name}.{key}: --conf {conf[0]} by name on serverless (no RADLAKE_CONF_DIR there)")
            spt = task.get("spark_python_task")
            if spt is not None:
                file = root / spt.get("python_file", "")
                if not spt.get("python_file") or not file.is_file():
                    problems.append(f"{job_name}.{key}: python_file '{spt.get('python_file')}' does not exist")
            if spt is not None or task.get("python_wheel_task") is not None:
                if environment is not None:  # serverless: the environment installs the wheel
                    wheels = [
                        d for d in environments.get(environment, {}).get("dependencies") or [] if d.endswith(".whl")
                    ]
                else:
                    wheels = [
                        lib["whl"] for lib in task.get("libraries") or [] if isinstance(lib, Mapping) and "whl" in lib
                    ]
                if not wheels:
                    problems.append(f"{job_name}.{key}: no wheel library (radlake would not be installed)")
                if not chosen:
                    problems.append(
                        f"{job_name}.{key}: no compute (a Python task needs a cluster or an environment_key)"
                    )
                for whl in wheels:
                    if not any(
                        os.path.normpath(whl).startswith(os.path.normpath(os.path.join(d, "dist"))) for d in wheel_dirs
                    ):
                        problems.append(f"{job_name}.{key}: wheel '{whl}' is not under an artifact's dist/")
            ups = upstream(by_key, key)
            for where, text in walk_strings(task):
                for ref_task, value in TASK_VALUE_REF.findall(text):
                    if ref_task not in ups:
                        problems.append(f"{job_name}.{key}: {where} reads task values of '{ref_task}', not upstream")
                        continue
                    steps = option_values(task_arguments(by_key[ref_task]), "--steps")
                    published = set().union(*(STEP_OUTPUTS.get(s, set()) for s in ",".join(steps).split(",")))
                    if value not in published:
                        problems.append(
                            f"{job_name}.{key}: {where} reads '{value}', which '{ref_task}' does not publish"
                        )
    return problems


def check_references(bundle: Mapping) -> list[str]:
    """Every ``${var.X}`` is a defined variable; every ``${...}`` uses a known namespace."""
    problems: list[str] = []
    defined = set(bundle.get("variables") or {})
    for where, text in walk_strings(bundle):
        for name in VAR_REF.findall(text):
            if name not in defined:
                problems.append(f"{where}: ${{var.{name}}} is not defined in variables")
        for ref in ANY_REF.findall(text):
            if ref.split(".")[0] not in REF_NAMESPACES:
                problems.append(f"{where}: unknown reference ${{{ref}}}")
    return problems


def check_targets(
    bundle: Mapping, root: Path = REPO, *, given_at_deploy: Mapping[str, set[str]] | None = None
) -> list[str]:
    """Target modes, one default target, its conf/<var.conf>.yml each, every variable given a value.

    ``given_at_deploy`` names, per target, the variables that deployment passes
    (``--var name=value`` or ``BUNDLE_VAR_name``) rather than the file.
    """
    problems: list[str] = []
    targets = bundle.get("targets") or {}
    if not targets:
        problems.append("targets: none defined")
    defaults = [name for name, t in targets.items() if (t or {}).get("default")]
    if len(defaults) != 1:
        problems.append(f"targets: exactly one default target expected, got {defaults}")
    defined = set(bundle.get("variables") or {})
    for name, target in targets.items():
        target = target or {}
        if target.get("mode") not in MODES:
            problems.append(f"targets.{name}: mode '{target.get('mode')}' is not one of {MODES}")
        conf = target_variables(bundle, name).get("conf")
        if not (root / "conf" / f"{conf}.yml").is_file():
            problems.append(f"targets.{name}: no conf/{conf}.yml for `--conf ${{var.conf}}`")
        for var in target.get("variables") or {}:
            if var not in defined:
                problems.append(f"targets.{name}.variables: '{var}' is not defined in variables")
        values = target_variables(bundle, name)
        for var in sorted(defined):
            if values.get(var) is None and var not in (given_at_deploy or {}).get(name, set()):
                problems.append(f"targets.{name}: variable '{var}' has no value (no default, not set by the target)")
    return problems


def check_jobs_parse(bundle: Mapping) -> list[str]:
    """``databricks.bundles.jobs.Job.from_dict`` accepts every job of every target, variables substituted."""
    from databricks.bundles.jobs import Job

    problems: list[str] = []
    for target in targets_of(bundle):
        values = resolved_values(bundle, target)
        for job_name, job in jobs_of(bundle).items():
            resolved = substitute(job, values)
            leftover = [t for _, t in walk_strings(resolved) if "${" in t]
            if leftover:
                problems.append(f"{target}/{job_name}: unresolved references {leftover[:3]}")
            try:
                Job.from_dict(resolved)
            except Exception as exc:  # the library raises ValueError, TypeError, KeyError ...
                problems.append(f"{target}/{job_name}: Job.from_dict rejected it: {type(exc).__name__}: {exc}")
    return problems


def check_task_arguments(bundle: Mapping, root: Path = REPO) -> list[str]:
    """Each spark_python_task's file + parameters parse with radlake's CLI and its --conf/--set load."""
    from radlake.cli import get_args_parser
    from radlake.config import load_config
    from radlake.errors import RadlakeError
    from radlake.workflow.pipeline import parse_steps

    problems: list[str] = []
    parser = get_args_parser()
    for target in targets_of(bundle):
        values = resolved_values(bundle, target)
        for job_name, job in jobs_of(bundle).items():
            for task in job.get("tasks") or []:
                spt = task.get("spark_python_task")
                if spt is None or not (root / spt.get("python_file", "")).is_file():
                    continue  # check_structure reports it
                where = f"{target}/{job_name}.{task.get('task_key')}"
                args = [TASK_VALUE_REF.sub("value-from-upstream", a) for a in substitute(task_arguments(task), values)]
                command = job_file_command(root / spt["python_file"])
                try:
                    ns = parser.parse_args([*command, *args])
                except SystemExit:
                    problems.append(f"{where}: `radlake {' '.join(command)}` rejects its parameters {args}")
                    continue
                try:
                    if getattr(ns, "steps", None):
                        parse_steps(ns.steps)
                    conf = root / "conf" / f"{ns.conf}.yml"  # where RADLAKE_CONF_DIR points on the cluster
                    synced = DEPLOY_VALUES["workspace.file_path"] + "/"  # the bundle's files on the workspace
                    if ns.conf.startswith(synced):
                        conf = root / ns.conf[len(synced) :]
                    load_config(conf if conf.is_file() else ns.conf, overrides=ns.overrides)
                except RadlakeError as exc:
                    problems.append(f"{where}: {exc}")
    return problems


def schema_validator():
    """A jsonschema validator of the bundle schema whose ``pattern`` uses the ``regex`` package."""
    import jsonschema
    import regex

    schema = json.loads(SCHEMA_FILE.read_text())

    def pattern(validator, patrn, instance, schema):
        if validator.is_type(instance, "string") and not regex.search(patrn, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")

    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": pattern})
    return cls(schema)


def _leaves(error) -> list:
    if not error.context:
        return [error]
    return [leaf for sub in error.context for leaf in _leaves(sub)]


def check_schema(bundle: Mapping, validator) -> list[str]:
    """Schema errors, each as its deepest location and messages (a oneOf error hides them in its context)."""
    problems = []
    bundle = copy.deepcopy(dict(bundle))
    (bundle.get("bundle") or {}).pop("target", None)  # set by for_target, as the CLI sets it, not written
    for error in validator.iter_errors(bundle):
        leaves = _leaves(error)
        depth = max(len(e.absolute_path) for e in leaves)
        deepest = [e for e in leaves if len(e.absolute_path) == depth]
        path = "/".join(str(p) for p in deepest[0].absolute_path)
        problems.append(f"{path}: {'; '.join(sorted({e.message[:200] for e in deepest})[:3])}")
    return problems


# ------------------------------------------------------------------------------------ the bundle


@pytest.fixture(scope="module")
def bundle() -> dict:
    """databricks.yml and resources/*.yml, before any target is applied."""
    return load_bundle()


@pytest.fixture(scope="module")
def dev(bundle) -> dict:
    return for_target(bundle, "dev")


@pytest.fixture(scope="module")
def serverless(bundle) -> dict:
    return for_target(bundle, "dev_serverless")


@pytest.fixture(scope="module", params=["dev", "prod", "dev_serverless", "prod_serverless"])
def loaded(bundle, request) -> dict:
    """The bundle as ``databricks bundle ... -t <target>`` loads it."""
    return for_target(bundle, request.param)


@pytest.fixture(scope="module")
def validator():
    if not SCHEMA_FILE.is_file():
        pytest.skip(f"bundle JSON schema not found at {SCHEMA_FILE} (set RADLAKE_BUNDLE_SCHEMA)")
    return schema_validator()


def test_every_target_is_checked(bundle):
    assert set(bundle["targets"]) == {"dev", "prod", *SERVERLESS_TWINS}


def test_bundle_structure(loaded):
    assert check_structure(loaded) == []


def test_bundle_references(loaded):
    assert check_references(loaded) == []


#: Variables the production deployment passes (CI: BUNDLE_VAR_service_principal=<application id>).
GIVEN_AT_DEPLOY = {"prod": {"service_principal"}, "prod_serverless": {"service_principal"}}


def test_bundle_targets(bundle):
    assert check_targets(bundle, given_at_deploy=GIVEN_AT_DEPLOY) == []
    assert bundle["variables"]["service_principal"].get("default") is None  # never a built-in identity
    assert bundle["targets"]["dev"]["mode"] == "development" and bundle["targets"]["dev"]["default"] is True
    assert bundle["targets"]["prod"]["mode"] == "production"


def test_bundle_jobs_parse_with_databricks_bundles(loaded):
    assert check_jobs_parse(loaded) == []


def test_bundle_task_arguments_parse_with_radlake_cli(loaded):
    assert check_task_arguments(loaded) == []


def test_bundle_matches_json_schema(loaded, validator):
    assert check_schema(loaded, validator) == []


def test_included_files_resolve_paths_from_their_own_folder(bundle):
    """resources/*.yml name ``../jobs/...`` and ``../dist/*.whl``; the loader resolves them as the CLI does."""
    raw = yaml.safe_load((REPO / "resources" / "score.yml").read_text())
    assert (
        raw["resources"]["jobs"]["radlake_score"]["tasks"][0]["spark_python_task"]["python_file"] == "../jobs/score.py"
    )
    task = jobs_of(bundle)["radlake_score"]["tasks"][0]
    assert task["spark_python_task"]["python_file"] == "./jobs/score.py"
    assert (REPO / task["spark_python_task"]["python_file"]).is_file()


def test_serverless_targets_move_ingest_and_score_only(bundle):
    """dev_serverless / prod_serverless equal dev / prod except where ingest and score run."""
    for twin, classic in SERVERLESS_TWINS.items():
        on_clusters, moved = for_target(bundle, classic), for_target(bundle, twin)
        skip = ("resources", "default", "variables")
        spec = {k: v for k, v in bundle["targets"][twin].items() if k not in skip}
        assert spec == {k: v for k, v in bundle["targets"][classic].items() if k not in skip}
        assert target_variables(bundle, twin) == target_variables(bundle, classic)
        for name, job in jobs_of(on_clusters).items():
            if name not in SERVERLESS_JOBS:
                assert jobs_of(moved)[name] == job, name  # training, evaluation, sweep: their job clusters
                continue
            server = jobs_of(moved)[name]
            assert not server.get("job_clusters"), name
            (environment,) = server["environments"]
            assert environment["spec"]["dependencies"] == ["./dist/*.whl"]
            assert environment["spec"]["environment_version"] == "${var.serverless_environment_version}"
            for task, cluster_task in zip(server["tasks"], job["tasks"], strict=True):
                assert task["environment_key"] == environment["environment_key"]
                assert not {"job_cluster_key", "libraries", "new_cluster", "existing_cluster_id"} & set(task), task
                assert option_values(task_arguments(task), "--conf") == ["${workspace.file_path}/conf/${var.conf}.yml"]
                assert cluster_task["job_cluster_key"] == "cpu" and cluster_task["libraries"] == [
                    {"whl": "./dist/*.whl"}
                ]
                assert task_arguments(task) == task_arguments(cluster_task)
            assert server["schedule"] == job["schedule"]
    for job in SERVERLESS_JOBS:  # the per-target blocks of a kind are one block written twice
        targets = bundle["targets"]
        assert targets["dev"]["resources"]["jobs"][job] == targets["prod"]["resources"]["jobs"][job]
        assert (
            targets["dev_serverless"]["resources"]["jobs"][job] == targets["prod_serverless"]["resources"]["jobs"][job]
        )


def test_a_target_without_compute_for_a_job_is_rejected(bundle):
    broken = copy.deepcopy(bundle)
    del broken["targets"]["prod"]["resources"]["jobs"]["radlake_score"]
    assert any("radlake_score.score: no compute" in p for p in check_structure(for_target(broken, "prod")))


def test_a_job_defined_twice_or_a_missing_include_is_rejected(tmp_path):
    (tmp_path / "resources").mkdir()
    for name in ("a", "b"):
        (tmp_path / "resources" / f"{name}.yml").write_text("resources:\n  jobs:\n    radlake_x:\n      name: x\n")
    (tmp_path / "databricks.yml").write_text("bundle:\n  name: t\ninclude:\n  - resources/*.yml\n")
    with pytest.raises(ValueError, match=r"radlake_x.*already defined"):
        load_bundle(tmp_path / "databricks.yml", tmp_path)
    (tmp_path / "databricks.yml").write_text("bundle:\n  name: t\ninclude:\n  - jobs/*.yml\n")
    with pytest.raises(ValueError, match="matches no file"):
        load_bundle(tmp_path / "databricks.yml", tmp_path)


def test_bundle_shape(bundle, dev):
    """The jobs, clusters and triggers this bundle promises (on job clusters: dev)."""
    jobs = jobs_of(dev)
    assert set(jobs) >= {"radlake_ingest", "radlake_train", "radlake_score"}
    train = [t["task_key"] for t in jobs["radlake_train"]["tasks"]]
    assert train == ["labels", "train_vertebra", "promote_vertebra", "crops", "train_schmorl", "promote_schmorl"]
    for task in jobs["radlake_train"]["tasks"]:
        assert option_values(task_arguments(task), "--steps") == [task["task_key"]]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in jobs["radlake_train"]["job_clusters"]}
    assert "gpu" in clusters["gpu"]["spark_version"] or "gpu" in str(
        bundle["variables"][VAR_REF.search(clusters["gpu"]["spark_version"]).group(1)]["default"]
    )
    for name in ("train_vertebra", "train_schmorl"):
        assert next(t for t in jobs["radlake_train"]["tasks"] if t["task_key"] == name)["job_cluster_key"] == "gpu"
    for job in ("radlake_ingest", "radlake_score"):
        assert {t["job_cluster_key"] for t in jobs[job]["tasks"]} == {"cpu"}
        cron = jobs[job]["schedule"]["quartz_cron_expression"].split()
        assert len(cron) in (6, 7), cron
    for spec in bundle["variables"].values():
        assert spec.get("description"), spec
    assert bundle["targets"]["prod"]["run_as"]["service_principal_name"] == "${var.service_principal}"
    assert bundle["targets"]["prod"]["presets"]["trigger_pause_status"] == "UNPAUSED"
    assert bundle["targets"]["dev"]["presets"]["trigger_pause_status"] == "PAUSED"
    for version in (
        target_variables(bundle, "prod")["spark_version"],
        target_variables(bundle, "prod")["gpu_spark_version"],
    ):
        major, minor = (int(x) for x in version.split(".")[:2])
        assert (major, minor) >= (17, 3) and "-ml-" in version, version


# ----------------------------------------------------------------- each check can fail (negatives)


def _task(bundle: dict, job: str, key: str) -> dict:
    return next(t for t in bundle["resources"]["jobs"][job]["tasks"] if t["task_key"] == key)


def test_dangling_depends_on_is_rejected(dev):
    broken = copy.deepcopy(dev)
    _task(broken, "radlake_train", "crops")["depends_on"] = [{"task_key": "promote_vertebrae"}]
    assert any("depends_on unknown task 'promote_vertebrae'" in p for p in check_structure(broken))


def test_dependency_cycle_is_rejected(dev):
    broken = copy.deepcopy(dev)
    _task(broken, "radlake_train", "labels")["depends_on"] = [{"task_key": "promote_schmorl"}]
    assert any("cycle" in p for p in check_structure(broken))


def test_unknown_job_cluster_is_rejected(dev):
    broken = copy.deepcopy(dev)
    _task(broken, "radlake_train", "train_vertebra")["job_cluster_key"] = "gpus"
    assert any("job_cluster_key 'gpus'" in p for p in check_structure(broken))


def test_duplicate_task_key_is_rejected(dev):
    broken = copy.deepcopy(dev)
    _task(broken, "radlake_train", "crops")["task_key"] = "labels"
    assert any("duplicate task_key 'labels'" in p for p in check_structure(broken))


def test_missing_task_file_is_rejected(dev):
    broken = copy.deepcopy(dev)
    _task(broken, "radlake_score", "score")["spark_python_task"]["python_file"] = "./jobs/scoring.py"
    assert any("./jobs/scoring.py" in p for p in check_structure(broken))


def test_conf_by_name_without_conf_dir_is_rejected(dev):
    broken = copy.deepcopy(dev)
    del broken["resources"]["jobs"]["radlake_evaluate"]["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    assert any("radlake_evaluate.evaluate" in p and "RADLAKE_CONF_DIR" in p for p in check_structure(broken))


def test_missing_wheel_library_is_rejected(dev):
    broken = copy.deepcopy(dev)
    del _task(broken, "radlake_ingest", "ingest")["libraries"]
    assert any("no wheel library" in p for p in check_structure(broken))


def test_task_value_from_a_task_not_upstream_is_rejected(dev):
    broken = copy.deepcopy(dev)
    params = _task(broken, "radlake_train", "promote_vertebra")["spark_python_task"]["parameters"]
    params[params.index("{{tasks.train_vertebra.values.vertebra_run_id}}")] = "{{tasks.crops.values.vertebra_run_id}}"
    assert any("'crops', not upstream" in p for p in check_structure(broken))


def test_task_value_the_step_does_not_publish_is_rejected(dev):
    broken = copy.deepcopy(dev)
    params = _task(broken, "radlake_train", "promote_schmorl")["spark_python_task"]["parameters"]
    params[params.index("{{tasks.train_schmorl.values.schmorl_run_id}}")] = "{{tasks.train_schmorl.values.run_id}}"
    assert any("reads 'run_id'" in p for p in check_structure(broken))


def test_undefined_variable_is_rejected(dev):
    broken = copy.deepcopy(dev)
    _task(broken, "radlake_score", "score")["spark_python_task"]["parameters"].append("storage.schema=${var.shema}")
    assert any("${var.shema}" in p for p in check_references(broken))
    broken["resources"]["jobs"]["radlake_score"]["description"] = "${bundel.target}"
    assert any("unknown reference ${bundel.target}" in p for p in check_references(broken))


def test_bad_target_mode_and_missing_variable_value_are_rejected(dev):
    broken = copy.deepcopy(dev)
    broken["targets"]["prod"]["mode"] = "prod"
    broken["targets"]["staging"] = {"mode": "production", "variables": {"conf": "staging"}}  # no such conf, no SP
    problems = check_targets(broken, given_at_deploy=GIVEN_AT_DEPLOY)
    assert any("targets.prod: mode 'prod'" in p for p in problems)
    assert any("no conf/staging.yml" in p for p in problems)
    assert any("targets.staging: variable 'service_principal' has no value" in p for p in problems)


def test_job_from_dict_rejects_a_wrong_job(dev):
    broken = copy.deepcopy(dev)
    _task(broken, "radlake_ingest", "ingest")["spark_python_taks"] = _task(broken, "radlake_ingest", "ingest").pop(
        "spark_python_task"
    )
    broken["variables"]["gpu_workers"]["default"] = "two"
    problems = check_jobs_parse(broken)
    assert any("radlake_ingest: Job.from_dict rejected it" in p and "spark_python_taks" in p for p in problems)
    assert any("radlake_sweep: Job.from_dict rejected it" in p for p in problems)  # num_workers: "two"


def test_task_arguments_unknown_to_radlake_are_rejected(dev):
    broken = copy.deepcopy(dev)
    params = _task(broken, "radlake_train", "labels")["spark_python_task"]["parameters"]
    params[params.index("storage.schema=${var.schema}")] = "storage.shema=${var.schema}"
    _task(broken, "radlake_train", "crops")["spark_python_task"]["parameters"].append("--vertebra-run")
    _task(broken, "radlake_train", "train_schmorl")["spark_python_task"]["parameters"][3] = "train_schmorls"
    problems = check_task_arguments(broken)
    assert any("radlake_train.labels" in p and "storage.shema" in p for p in problems)
    assert any("radlake_train.crops" in p and "rejects its parameters" in p for p in problems)
    assert any("radlake_train.train_schmorl" in p and "train_schmorls" in p for p in problems)


def test_json_schema_rejects_a_wrong_bundle(dev, validator):
    broken = copy.deepcopy(dev)
    broken["resources"]["jobs"]["radlake_train"]["max_concurrent_runs"] = "one"
    broken["artifacts"]["radlake_wheel"]["kind"] = "whl"
    problems = check_schema(broken, validator)
    assert any("radlake_train/max_concurrent_runs" in p for p in problems)
    assert any("artifacts/radlake_wheel" in p and "kind" in p for p in problems)
    # and the swapped `pattern` really runs: a \p{L} interpolation passes, a malformed one does not
    ok, bad = copy.deepcopy(dev), copy.deepcopy(dev)
    ok["resources"]["jobs"]["radlake_train"]["max_concurrent_runs"] = "${var.gpu_workers}"
    bad["resources"]["jobs"]["radlake_train"]["max_concurrent_runs"] = "${var.9}"
    assert check_schema(ok, validator) == []
    assert any("radlake_train/max_concurrent_runs" in p for p in check_schema(bad, validator))


def test_serverless_task_mistakes_are_rejected(serverless):
    broken = copy.deepcopy(serverless)
    _task(broken, "radlake_score", "score")["environment_key"] = "default"
    ingest = _task(broken, "radlake_ingest", "ingest")
    ingest["libraries"] = [{"whl": "./dist/*.whl"}]
    ingest["job_cluster_key"] = "cpu"
    params = ingest["spark_python_task"]["parameters"]
    params[params.index("${workspace.file_path}/conf/${var.conf}.yml")] = "${var.conf}"
    problems = check_structure(broken)
    assert any("radlake_score.score: environment_key 'default' is not in environments" in p for p in problems)
    assert any("radlake_ingest.ingest: more than one compute" in p for p in problems)
    assert any("radlake_ingest.ingest: libraries on a serverless task" in p for p in problems)
    assert any("radlake_ingest.ingest" in p and "by name on serverless" in p for p in problems)


def test_serverless_environment_without_the_wheel_is_rejected(serverless):
    broken = copy.deepcopy(serverless)
    broken["resources"]["jobs"]["radlake_score"]["environments"][0]["spec"]["dependencies"] = ["pydicom"]
    assert any("radlake_score.score: no wheel library" in p for p in check_structure(broken))
    del _task(broken, "radlake_ingest", "ingest")["environment_key"]
    assert any("radlake_ingest.ingest: no compute" in p for p in check_structure(broken))
