"""The one adapter to MLflow's registry: the tracking client, the registered model
`clickstream-buy-intent` with its versions, tags and `challenger` and `champion` aliases, the
resolution of a model URI to a version, and the decision history (experiment
`clickstream-decisions`). Every other module reads and writes the registry through these functions,
so that its layout (tag names, claims, decision runs) lives in one place. It only reads and writes
MLflow: what to decide is registry.decision, how a decision is gathered is registry.champion.

Everything goes to `settings.tracking_uri` (tracking and registry alike); with a local
store (SQLite or a folder) artifacts live under `settings.home/mlartifacts`, never in
the working directory.

Decision records are append-only: each is its own run of `clickstream-decisions` whose
fields are run params, which MLflow never lets anyone change. Only FINISHED runs are history.

A decision is one transaction with the `champion` alias (record_decision), under a claim on the
registered model that serializes decisions across processes and hosts (`claimed`): settle what a
killed decision left, check that the champion and the history are still what the decision was
taken on (else DecisionConflict: decide again), write the record RUNNING with the alias it leads
to (tag `champion_after`) and the number of its fields, move the alias, mark it FINISHED. A kill at
any instant leaves at most one RUNNING record; the next command that reads or writes the history
settles it (`settle_decisions`): FINISHED when it is complete and the alias is where it leads,
FAILED otherwise, so history and alias agree again.

A claim is a tag `clickstream.claim.<token>` on the registered model (decisions) or on the
`clickstream` experiment (the start of a training run): write yours, read the tags back, go on
only when yours is the only live one, else take yours back and wait (CLAIM_WAIT_S at most). The
store orders the writes, so two claimants can both back off but never both go on. A claim whose
process is gone (same host) or older than CLAIM_EXPIRY (any host) is abandoned and removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import random
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import mlflow.artifacts
from mlflow.entities import Param, ViewType
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from clickstream.pipeline.core.config import CHALLENGER, CHAMPION, Settings
from clickstream.pipeline.core.errors import (
    ClickstreamError,
    ModelNotFoundError,
    PromotionError,
    StorageError,
    TrackingStoreError,
    TrainingError,
)
from clickstream.pipeline.core.processes import is_stale, owner
from clickstream.pipeline.core.tracking import redacted, require_store, scrubbed, store_creation_lock

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

EXPERIMENT = "clickstream"
MODEL_ARTIFACT = "model"  # the model's folder inside its run, where every registered version points
DECISIONS_EXPERIMENT = "clickstream-decisions"  # one run per champion decision, never rewritten
# version tags written once, at registration: read by training (fingerprint), the gate
# (validation days, feature schema) and the analysts' figures (the window the model saw)
FINGERPRINT_TAG = "fingerprint"
VAL_START_TAG, VAL_END_TAG = "val_start", "val_end"  # the validation days; val_end is the last day seen
WINDOW_TAG = "window"  # FIRST..LAST: the training window asked for
FEATURE_SCHEMA_TAG = "feature_schema"  # features.tensors.feature_schema() of the code that trained it
# the lake's table versions the model learned from (`clickstream train --as-of` retrains on the same)
SEQUENCES_VERSION_TAG, EVENTS_VERSION_TAG = "sequences_version", "events_version"

# tags of a decision run, written with it: where the `champion` alias is once the decision holds, how
# many fields (params) the complete record has, and the process writing it
CHAMPION_AFTER_TAG, FIELDS_TAG, WRITER_TAG = "champion_after", "fields", "owner"
SETTLED_TAG, FAILURE_TAG = "settled", "failure_reason"  # on a record another process settled

CLAIM_PREFIX = "clickstream.claim."
# A claim is held for a few registry calls (a decision's record, the start of a training run): one
# older than this was left by a process that died or hung, on whatever host, and is removed.
CLAIM_EXPIRY = dt.timedelta(minutes=10)
CLAIM_WAIT_S = 60.0  # how long a claimant waits for a live claim to go before it gives up in one line

_OPENED: set[str] = set()  # tracking URIs this process has opened (tables created and migrated)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_RUNS_URI = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})/(?P<path>(?!.*\.\.)[\w./-]+)$")  # no `..`: stays in the run


def tracking_client(settings: Settings) -> MlflowClient:
    """A client on settings.tracking_uri, also made this process's tracking and registry URI
    for mlflow's fluent API, with the `clickstream` experiment created (artifacts under
    settings.home for local stores). A store that cannot be reached raises TrackingStoreError.
    The first opening in a process creates or migrates a local SQLite store's tables under
    store_creation_lock, so that processes opening a fresh store at once never race MLflow's migration."""
    # mlflow also exports the URIs to the environment, where load_settings would read them
    # for every later Settings of this process (another lake, another test): put it back.
    uri = settings.tracking_uri
    exported = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in exported.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:  # the first contact: a store that is not there fails here, once mlflow's HTTP retries are spent
        if uri in _OPENED:
            client = mlflow.MlflowClient(uri, uri)
            missing = client.get_experiment_by_name(EXPERIMENT) is None
        else:
            with store_creation_lock(uri):
                client = mlflow.MlflowClient(uri, uri)
                missing = client.get_experiment_by_name(EXPERIMENT) is None  # opens the tracking store
                client.search_registered_models(max_results=1)  # opens the registry store
                if missing:
                    experiment_id(client, settings)
                    missing = False
            _OPENED.add(uri)
    except ImportError as error:  # a database URI whose driver is not installed
        raise TrackingStoreError(
            f"cannot open the MLflow tracking store {redacted(uri)} (MLFLOW_TRACKING_URI): "
            f"its database driver {error.name or error} is not installed"
        ) from None
    except (MlflowException, SQLAlchemyError, OSError) as error:
        lines = str(error).strip().splitlines()
        message = scrubbed(lines[0] if lines else type(error).__name__, uri)
        if (reason := StorageError.reason(error)) is not None:
            message = f"{reason} ({message}); free space or make it writable, then run it again"
        raise TrackingStoreError(
            f"cannot reach the MLflow tracking store {redacted(uri)} (MLFLOW_TRACKING_URI): {message}"
        ) from None
    if missing:
        experiment_id(client, settings)
    return client


def experiment_id(client: MlflowClient, settings: Settings | None = None, name: str = EXPERIMENT) -> str:
    """The id of experiment `name` (default `clickstream`), created if missing (artifacts under
    settings.home for a local store); another process creating it at the same time is no error."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    local = settings is not None and (
        settings.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in settings.tracking_uri
    )
    location = (settings.home / "mlartifacts").absolute().as_uri() if local and settings else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as error:
        found = client.get_experiment_by_name(name)
        if error.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
            raise
        return found.experiment_id


def version_with_fingerprint(settings: Settings, fingerprint: str) -> ModelVersion | None:
    """The newest registered version trained on exactly this window, data and configuration, if any."""
    found = tracking_client(settings).search_model_versions(
        f"name='{settings.model_name}' and tags.{FINGERPRINT_TAG}='{fingerprint}'"
    )
    ready = [v for v in found if v.status == "READY"]
    return max(ready, key=lambda v: int(v.version)) if ready else None


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version number behind `alias` of settings.model_name, or None when unset."""
    return _alias(tracking_client(settings), settings.model_name, alias)


def _alias(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_challenger(settings: Settings, version: str) -> None:
    """Point the `challenger` alias at `version` (idempotent)."""
    tracking_client(settings).set_registered_model_alias(settings.model_name, CHALLENGER, version)


def model_version(settings: Settings, version: str) -> ModelVersion:
    """One registered version of settings.model_name; ModelNotFoundError (one line) when there is none."""
    try:
        return tracking_client(settings).get_model_version(settings.model_name, version)
    except MlflowException:
        store = redacted(settings.tracking_uri)
        raise ModelNotFoundError(f"no version {version} of {settings.model_name} in {store}") from None


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    """The tags of one registered version; ModelNotFoundError (one line) when there is no such version."""
    return dict(model_version(settings, version).tags)


def registered_versions(settings: Settings) -> list[ModelVersion]:
    """Every registered version of settings.model_name, oldest first (empty when none)."""
    found = tracking_client(settings).search_model_versions(f"name='{settings.model_name}'")
    return sorted(found, key=lambda v: int(v.version))


def version_aliases(settings: Settings) -> dict[str, list[str]]:
    """The aliases of settings.model_name by the version they point at, each list sorted (a version
    without any is absent; empty while the model is not registered): one read of the registered
    model, where a version's own record carries none."""
    try:
        aliases = tracking_client(settings).get_registered_model(settings.model_name).aliases
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return {}
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        by_version.setdefault(str(version), []).append(alias)
    return by_version


def run_metrics(settings: Settings, run_ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """The final metrics of each run (the runs that trained registered versions), by run id: one search
    of the `clickstream` experiment for them all, and a read of its own for a run kept elsewhere."""
    wanted = list(dict.fromkeys(run_ids))
    client = tracking_client(settings)
    found = _searched_metrics(client, experiment_id(client, settings), wanted)
    found |= {run_id: dict(client.get_run(run_id).data.metrics) for run_id in wanted if run_id not in found}
    return {run_id: found[run_id] for run_id in wanted}


def _searched_metrics(client: MlflowClient, experiment: str, run_ids: list[str]) -> dict[str, dict[str, float]]:
    """The metrics of those of `run_ids` that are runs of `experiment` (deleted ones too), in one search."""
    ids = ", ".join(f"'{run_id}'" for run_id in run_ids if _RUN_ID.match(run_id))
    if not ids:
        return {}
    runs = _all_runs(client, experiment, f"attributes.run_id IN ({ids})", ViewType.ALL)
    return {run.info.run_id: dict(run.data.metrics) for run in runs}


# what mlflow.register_model prints at every registration, past any log level: the model created (or
# found) and the version created, which the caller's own summary names
REGISTRATION_NOTES = ("Successfully registered model ", "Registered model ", "Created version ")


def register(model_uri: str, model_name: str, tags: dict[str, str]) -> str:
    """Register the logged model at `model_uri` as a new version of `model_name` with `tags`, in the
    registry tracking_client last opened; returns the version. MLflow's REGISTRATION_NOTES are left
    out of stderr, and whatever else it writes there meanwhile (a warning) still comes out."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            return str(mlflow.register_model(model_uri, model_name, tags=tags).version)
    finally:
        lines = held.getvalue().splitlines(keepends=True)
        sys.stderr.write("".join(line for line in lines if not line.startswith(REGISTRATION_NOTES)))


# ---- model URIs: what a load may read, resolved in the configured store only ----


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI as the registry resolves it: the model's name, its version (`run-<id>` for a run's
    model that was never registered), the URI its artifacts download from and the version's tags
    (empty for an unregistered run's model)."""

    name: str
    version: str
    artifact_uri: str
    tags: dict[str, str]


def resolve_model(settings: Settings, uri: str) -> ResolvedModel:
    """A `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/RUN_ID/PATH` URI or a bare run id, resolved
    in settings.tracking_uri. ModelNotFoundError (one line) for anything else, checked before the store
    is opened (a local path or URL must never be read), and for a URI the store does not hold."""
    store = redacted(settings.tracking_uri)
    if _RUN_ID.match(uri):
        uri = f"runs:/{uri}/{MODEL_ARTIFACT}"
    models, runs = _MODELS_URI.match(uri), _RUNS_URI.match(uri)
    if not (models or runs):  # refused before the store is even opened
        raise ModelNotFoundError(
            f"{uri!r} is not a registry model URI; use models:/NAME@ALIAS, models:/NAME/VERSION, "
            f"runs:/RUN_ID/model or a run id from {store}"
        )
    require_store(settings.tracking_uri, uri)  # opening a missing store would create it
    client = tracking_client(settings)
    try:
        if models:
            name = models["name"]
            found = (
                client.get_model_version(name, models["version"])
                if models["version"]
                else client.get_model_version_by_alias(name, models["alias"])
            )
            return ResolvedModel(name, str(found.version), f"models:/{name}/{found.version}", dict(found.tags or {}))
        client.get_run(runs["run"])
        versions = client.search_model_versions(f"run_id='{runs['run']}'")
        registered = [v for v in versions if v.name == settings.model_name]
        if registered:
            return ResolvedModel(settings.model_name, str(registered[0].version), uri, dict(registered[0].tags or {}))
        return ResolvedModel(settings.model_name, f"run-{runs['run']}", uri, {})
    except MlflowException as error:
        raise ModelNotFoundError(f"model {uri} not found in {store}: {_first_line(error)}") from None


def download_model(model: ResolvedModel, uri: str, folder: Path) -> Path:
    """The model's artifacts downloaded under `folder`; ModelNotFoundError (one line, naming `uri`, the
    URI asked for) when they cannot be."""
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_uri, dst_path=str(folder)))
    except (MlflowException, OSError) as error:
        raise ModelNotFoundError(f"cannot download model {uri}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---- claims: mutual exclusion through tags, across processes and hosts ----


class ClaimedError(ClickstreamError):
    """Another live process holds the claim (after CLAIM_WAIT_S of waiting)."""


@dataclass(frozen=True)
class _Board:
    """Where claims are written: the tags of one registered model or one experiment."""

    read: Callable[[], dict[str, str]]
    write: Callable[[str, str], None]
    remove: Callable[[str], None]


def _model_board(client: MlflowClient, name: str) -> _Board:
    def read() -> dict[str, str]:
        return dict(client.get_registered_model(name).tags)

    return _Board(
        read,
        lambda key, value: client.set_registered_model_tag(name, key, value),
        lambda key: client.delete_registered_model_tag(name, key),
    )


def _experiment_board(client: MlflowClient, experiment: str) -> _Board:
    def remove(key: str) -> None:
        try:
            client.delete_experiment_tag(experiment, key)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

    return _Board(
        lambda: dict(client.get_experiment(experiment).tags),
        lambda key, value: client.set_experiment_tag(experiment, key, value),
        remove,
    )


def claim_is_abandoned(value: str, now: dt.datetime | None = None) -> bool:
    """Whether the claim `value` (JSON: owner host:pid, since) was left by a process that is gone
    (on this host) or is older than CLAIM_EXPIRY (any host); an unreadable claim counts as left."""
    try:
        claim = json.loads(value)
        holder, since = str(claim["owner"]), dt.datetime.fromisoformat(claim["since"])
        age = (now or dt.datetime.now(dt.UTC)) - since
    except (ValueError, KeyError, TypeError):
        return True
    if age >= CLAIM_EXPIRY:
        return True
    host, _, pid = holder.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and is_stale(holder, age)


def describe_claim(value: str) -> str:
    """A claim for a message: whose, which process, since when."""
    try:
        claim = json.loads(value)
        by = claim.get("by") or "?"
        return f"{by}, process {claim['owner']} since {claim['since']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "an unreadable claim"


def _acquire(board: _Board, purpose: str, by: str, wait_s: float) -> str:
    """Take the claim on `board`: written, read back as the only live claim (abandoned ones are removed
    on the way); returns its key. ClaimedError when another live claim stays for `wait_s` seconds."""
    key = f"{CLAIM_PREFIX}{uuid.uuid4().hex}"
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        now = dt.datetime.now(dt.UTC)
        board.write(key, json.dumps({"owner": owner(), "since": now.isoformat(), "purpose": purpose, "by": by}))
        tags = board.read()
        live = {}
        for other, value in tags.items():
            if other.startswith(CLAIM_PREFIX) and other != key:
                if claim_is_abandoned(value, now):
                    board.remove(other)
                else:
                    live[other] = value
        if key in tags and not live:
            return key
        board.remove(key)  # back off: the other claimant goes on (or both try again)
        if time.monotonic() >= deadline:
            holder = describe_claim(next(iter(live.values()))) if live else "another process"
            raise ClaimedError(
                f"{purpose} is claimed by another process ({holder}); try again once it is done "
                f"(a claim older than {CLAIM_EXPIRY.total_seconds() / 60:g} minutes is taken as abandoned)"
            )
        time.sleep(delay + random.uniform(0, delay))
        delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def training_claim(settings: Settings, client: MlflowClient) -> Iterator[None]:
    """While open, no other process starts (or ends as abandoned) a training run of the `clickstream`
    experiment: a claim on the experiment. TrainingError when another holds it past CLAIM_WAIT_S."""
    board = _experiment_board(client, experiment_id(client, settings))
    try:
        key = _acquire(board, "the start of a training run", owner(), CLAIM_WAIT_S)
    except ClaimedError as error:
        raise TrainingError(str(error)) from None
    try:
        yield
    finally:
        board.remove(key)


# ---- the decision history: one transaction with the `champion` alias ----


class DecisionConflict(PromotionError):
    """The champion or the history changed after a decision was taken: it must be taken again."""


class DecisionBusyError(PromotionError):
    """Another process is recording a decision (its claim stayed for CLAIM_WAIT_S)."""


@dataclass(frozen=True)
class DecisionRecord:
    """One finished decision: its id (the run id), its fields and when it was started (ms since epoch)."""

    id: str
    fields: dict[str, str]
    start_ms: int


@dataclass(frozen=True)
class DecisionLog:
    """The history (finished records, oldest first) and the `champion` alias, read together: what a
    decision is taken on, and what record_decision checks is still so."""

    champion: str | None
    records: tuple[DecisionRecord, ...]

    @property
    def last_id(self) -> str | None:
        return self.records[-1].id if self.records else None


def decision_log(settings: Settings) -> DecisionLog:
    """The history and the champion, after settling what killed decisions left (when no other process
    is recording one; else their RUNNING records are simply not history yet)."""
    client = tracking_client(settings)
    found = client.get_experiment_by_name(DECISIONS_EXPERIMENT)
    if found is None:
        return DecisionLog(_alias(client, settings.model_name, CHAMPION), ())
    if _unfinished(client, found.experiment_id):  # settled when this process may (a reader may not write)
        with contextlib.suppress(DecisionBusyError, ModelNotFoundError, MlflowException):
            settle_decisions(settings, wait_s=0.0)
    return _read_log(client, settings.model_name, found.experiment_id)


def decision_records(settings: Settings) -> list[tuple[str, dict[str, str]]]:
    """Every finished decision record as (id, fields), oldest first."""
    return [(record.id, record.fields) for record in decision_log(settings).records]


def settle_decisions(settings: Settings, wait_s: float = CLAIM_WAIT_S) -> list[str]:
    """Under the decision claim, settle every decision record a killed process left RUNNING (see
    the module's docstring); returns their ids."""
    client = tracking_client(settings)
    experiment = experiment_id(client, settings, DECISIONS_EXPERIMENT)
    with _decision_claim(client, settings, "settling", wait_s):
        return _settle(client, settings.model_name, experiment)


def record_decision(
    settings: Settings, fields: dict[str, str], *, champion_after: str | None, moves: bool, basis: DecisionLog
) -> str:
    """Append one decision (its fields as immutable run params) to the history and, when it `moves`
    the champion, point the `champion` alias at `champion_after`; returns the record's id. One
    transaction: under the decision claim, after settling what killed decisions left; DecisionConflict
    (nothing written) when the champion or the last record is no longer `basis`'s; DecisionBusyError
    when another process keeps the claim. A kill at any instant is settled by the next command."""
    client = tracking_client(settings)
    experiment = experiment_id(client, settings, DECISIONS_EXPERIMENT)
    name = settings.model_name
    with _decision_claim(client, settings, fields.get("decided_by", ""), CLAIM_WAIT_S):
        _settle(client, name, experiment)
        now = _read_log(client, name, experiment)
        if (now.champion, now.last_id) != (basis.champion, basis.last_id):
            was, is_ = (f"v{v}" if v else "no champion" for v in (basis.champion, now.champion))
            raise DecisionConflict(
                f"another decision was recorded while this one was taken (champion {was} then, {is_} now): "
                "nothing recorded; run the command again"
            )
        start = int(time.time() * 1000)
        if now.records:  # strictly after the last record, whatever this host's clock says
            start = max(start, now.records[-1].start_ms + 1)
        tags = {CHAMPION_AFTER_TAG: champion_after or "", FIELDS_TAG: str(len(fields)), WRITER_TAG: owner()}
        run_id = client.create_run(experiment, start_time=start, tags=tags, run_name=fields.get("action")).info.run_id
        try:
            client.log_batch(run_id, params=[Param(key, value) for key, value in fields.items()], synchronous=True)
            if moves and champion_after is not None:
                client.set_registered_model_alias(name, CHAMPION, champion_after)
        except BaseException:
            with contextlib.suppress(Exception):
                _settle_run(client, name, client.get_run(run_id))
            raise
        client.set_terminated(run_id, "FINISHED")
    return run_id


@contextlib.contextmanager
def _decision_claim(client: MlflowClient, settings: Settings, by: str, wait_s: float) -> Iterator[None]:
    """While open, this process alone records decisions of settings.model_name (a claim on it)."""
    name = settings.model_name
    board = _model_board(client, name)
    try:
        key = _acquire(board, f"the champion decision of {name}", by, wait_s)
    except ClaimedError as error:
        raise DecisionBusyError(str(error)) from None
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ModelNotFoundError(f"no model {name} is registered in {redacted(settings.tracking_uri)}") from None
    try:
        yield
    finally:
        board.remove(key)


def _unfinished(client: MlflowClient, experiment: str) -> list[Run]:
    """The decision records left RUNNING, oldest first."""
    return list(
        client.search_runs([experiment], "attributes.status = 'RUNNING'", order_by=["attributes.start_time ASC"])
    )


def _settle(client: MlflowClient, name: str, experiment: str) -> list[str]:
    """Settle every RUNNING decision record: under the claim, every one was left by a killed process."""
    runs = _unfinished(client, experiment)
    for run in runs:
        _settle_run(client, name, run)
    return [run.info.run_id for run in runs]


def _settle_run(client: MlflowClient, name: str, run: Run) -> None:
    """FINISHED when the record is complete and the alias is where it leads (the decision took
    effect), else FAILED with the reason: the history then agrees with the alias."""
    tags, params = run.data.tags, run.data.params
    if CHAMPION_AFTER_TAG not in tags or FIELDS_TAG not in tags:
        reason = "left unfinished by an earlier clickstream: not part of the history"
    elif len(params) != int(tags[FIELDS_TAG]):
        reason = "its process ended before the record was complete: not part of the history"
    elif (_alias(client, name, CHAMPION) or "") == tags[CHAMPION_AFTER_TAG]:
        client.set_tag(run.info.run_id, SETTLED_TAG, f"finished by {owner()}: its process ended once the alias held")
        client.set_terminated(run.info.run_id, "FINISHED")
        return
    else:
        reason = "its process ended before the champion alias moved: not part of the history"
    client.set_tag(run.info.run_id, FAILURE_TAG, reason)
    client.set_terminated(run.info.run_id, "FAILED")


def _read_log(client: MlflowClient, name: str, experiment: str) -> DecisionLog:
    runs = _all_runs(client, experiment, "attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"])
    records = tuple(DecisionRecord(run.info.run_id, dict(run.data.params), run.info.start_time) for run in runs)
    return DecisionLog(_alias(client, name, CHAMPION), records)


def _all_runs(
    client: MlflowClient,
    experiment: str,
    filter_string: str,
    view: int = ViewType.ACTIVE_ONLY,
    order_by: list[str] | None = None,
) -> list[Run]:
    """Every run of `experiment` that passes `filter_string`, all pages of the search."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment], filter_string, run_view_type=view, order_by=order_by, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs
