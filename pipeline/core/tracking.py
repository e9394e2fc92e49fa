"""The MLflow tracking URI as text, without MLflow: printable (secrets redacted) and cheap
questions about it that let commands fail before importing MLflow or creating a store.

A URI's secrets are its user-info (`user:password@`), every query value (`?token=...`, or a
bare `?word`) and its fragment; `redacted` removes all of them, so any message may name the store.

`store_creation_lock` serializes the first opening of a local SQLite store between processes, so
that MLflow's creation and migration of its tables never runs twice at once.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from clickstream.pipeline.core.errors import ModelNotFoundError

MASK = "***"


def _parts(uri: str) -> tuple[str, str, str, str, str] | None:
    """(scheme, user-info, host and path, query, fragment) of a URL; None for a plain path."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return None
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    userinfo, _, location = rest.rpartition("@")  # the last @: a password may hold one
    return scheme, userinfo, location, query, fragment


def redacted(uri: str) -> str:
    """The URI without its user-info, with every query value and the fragment masked: safe to
    print. A plain path comes back as it is."""
    parts = _parts(uri)
    if parts is None:
        return uri
    scheme, _, location, query, fragment = parts
    masked = "&".join(f"{key}={MASK}" if has else MASK for key, has, _ in (p.partition("=") for p in query.split("&")))
    return f"{scheme}://{location}" + (f"?{masked}" if query else "") + (f"#{MASK}" if fragment else "")


def scrubbed(text: str, uri: str) -> str:
    """`text` (an error message from a driver or MLflow) with `uri` redacted and each of its
    secrets, raw or percent-decoded, masked wherever else it appears."""
    text = text.replace(uri, redacted(uri))
    parts = _parts(uri)
    if parts is None:
        return text
    _, userinfo, _, query, fragment = parts
    secrets = [userinfo.partition(":")[2], fragment, *(p.rpartition("=")[2] for p in query.split("&"))]
    for secret in sorted({s for raw in secrets for s in (raw, unquote(raw)) if len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local tracking store lives in (SQLite database, file store), or
    None for a server or database elsewhere."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///").partition("?")[0])
    if uri.startswith("file://"):
        return Path(unquote(uri.removeprefix("file://")))
    if uri.startswith("/"):  # mlflow reads an absolute path as a file store
        return Path(uri)
    return None


def store_is_missing(uri: str) -> bool:
    """Whether `uri` names a local store that does not exist yet, so that no model is
    registered there (opening it with MLflow would create it)."""
    path = local_store_path(uri)
    return path is not None and str(path) not in ("", ":memory:") and not path.exists()


def require_store(uri: str, model_uri: str) -> None:
    """ModelNotFoundError, before MLflow is imported or any store created, when `uri` names a
    local store that does not exist: no model (`model_uri`, for the message) can be there yet."""
    if store_is_missing(uri):
        raise ModelNotFoundError(
            f"model {model_uri} not found: the tracking store {redacted(uri)} (MLFLOW_TRACKING_URI) "
            "does not exist yet; run `clickstream train --promote` first"
        )


@contextlib.contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    """While open, an exclusive lock (fcntl.flock) on `.NAME.lock` beside a local SQLite store NAME
    (its folder created if missing), so that only one process at a time creates or migrates the
    store's tables: MLflow does that, without a lock of its own, whenever it opens a store whose
    tables are missing or out of date. A no-op for every other store (a server or a database
    elsewhere migrates once, with `mlflow db upgrade`). An unusable folder raises OSError."""
    path = local_store_path(uri) if uri.startswith("sqlite:///") else None
    if path is None or str(path) in ("", ":memory:"):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
