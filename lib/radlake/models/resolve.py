"""Model URIs → concrete registered versions, before any work starts.

Accepted: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run_id>/<path>``
and MLflow 3's logged-model URIs ``models:/m-<model_id>`` (what ``log_model`` returns).
A URI that does not resolve raises :class:`ModelNotFoundError` naming it and the
reason (no such model, alias or version, or run), so a job fails before it reads data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from radlake.errors import RadlakeError
from radlake.summary import Summary


class ModelNotFoundError(RadlakeError):
    """A model URI names a model, alias, version or run that does not exist."""


@dataclass(frozen=True)
class ResolvedModel(Summary):
    """A model URI pinned to what it pointed at when resolved.

    ``uri`` is the pinned form (``models:/name/version``, or the run URI), so that
    later steps use the same model even if an alias moves meanwhile.
    """

    requested: str
    uri: str
    name: str | None
    version: str | None
    run_id: str


def version_aliases(client: mlflow.MlflowClient, name: str) -> dict[str, list[str]]:
    """The aliases of each version of registered model ``name``: ``{"3": ["champion"], ...}`` (sorted).

    Read from the registered model, because version search results do not carry
    aliases in every registry store.

    Raises
    ------
    mlflow.exceptions.MlflowException
        If the registry has no model of that name.
    """
    aliases: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    return {version: sorted(names) for version, names in aliases.items()}


_MODELS = re.compile(r"^models:/(?P<name>[^@/]+(?:\.[^@/]+)*)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
_LOGGED = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)$")
_RUNS = re.compile(r"^runs:/(?P<run>[0-9a-zA-Z]+)/(?P<path>.+)$")


def resolve_model_uri(uri: str) -> ResolvedModel:
    """Resolve ``uri`` against the current tracking and registry URIs.

    Raises
    ------
    ModelNotFoundError
        For a malformed URI or one that names nothing.
    """
    client = mlflow.MlflowClient()
    if m := _LOGGED.match(uri):
        logged = _look_up(uri, f"logged model '{m['id']}'", client.get_logged_model, m["id"])
        return ResolvedModel(uri, uri, None, None, logged.source_run_id or "")
    if m := _MODELS.match(uri):
        name, alias, version = m["name"], m["alias"], m["version"]
        if alias:
            mv = _look_up(uri, f"alias '{alias}' of model '{name}'", client.get_model_version_by_alias, name, alias)
        else:
            mv = _look_up(uri, f"version {version} of model '{name}'", client.get_model_version, name, version)
        return ResolvedModel(uri, f"models:/{name}/{mv.version}", name, str(mv.version), mv.run_id)
    if m := _RUNS.match(uri):
        run = _look_up(uri, f"run '{m['run']}'", client.get_run, m["run"])
        return ResolvedModel(uri, uri, None, None, run.info.run_id)
    raise ModelNotFoundError(
        f"Model URI {uri!r} is not one of models:/<name>@<alias>, models:/<name>/<version>, "
        "models:/m-<logged model id> or runs:/<run_id>/<path>"
    )


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _look_up(uri: str, what: str, get, *args):
    """``get(*args)``; an MLflow error becomes :class:`ModelNotFoundError` naming ``uri`` and ``what`` is missing."""
    try:
        return get(*args)
    except MlflowException as exc:
        raise ModelNotFoundError(f"Model URI {uri!r} does not resolve: no {what} ({_short(exc)})") from None
