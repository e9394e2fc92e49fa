"""Errors a user can cause. The CLI turns them into one-line messages and exit code 2;
anything else is a bug and fails loudly with its traceback."""

from __future__ import annotations

import errno
import re
from typing import ClassVar


class ClickstreamError(Exception):
    """Base for user-facing errors: the message is the whole story, one line."""


class SettingError(ClickstreamError):
    """A setting from the environment or a flag is malformed or outside its accepted range."""


class InputError(ClickstreamError):
    """A raw input file cannot be read at all (missing, corrupt gzip, wrong format)."""


class BadRowThresholdError(ClickstreamError):
    """Too large a share of an ingest's rows went to the quarantine."""


class NoDataError(ClickstreamError):
    """A requested date range holds nothing to work on."""


class TrainingError(ClickstreamError):
    """A training run cannot produce a trustworthy model (NaN loss, one class, too few buyers)."""


class TrackingStoreError(ClickstreamError):
    """The MLflow tracking store (MLFLOW_TRACKING_URI) cannot be reached or opened."""


class ModelNotFoundError(ClickstreamError):
    """The model URI does not resolve in the configured registry."""


class PromotionError(ClickstreamError):
    """The champion cannot be changed as asked: the champion or the version cannot be loaded or
    compared, or the history holds no earlier champion to roll back to."""


class LakePathError(ClickstreamError):
    """A path would escape the lake root."""


class LakeConflictError(ClickstreamError):
    """A lake commit could not land: another writer changed the same rows at the same time, or
    the store refused the write."""


class LakeFormatError(ClickstreamError):
    """A lake table is not what the command needs: the layout before Delta tables, or a version
    it does not have."""


class StorageError(ClickstreamError):
    """A file system refused a write: no space left, a read-only file system, no permission, or a path
    through a file. `reason(error)` finds such a cause behind any exception: an OSError's errno, or the
    "(os error N)" that the Rust libraries (polars, delta-rs) put in their messages, or SQLite's "database or
    disk is full"."""

    REASONS: ClassVar[dict[int, str]] = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large for the file system",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }
    _OS_ERROR = re.compile(r"\(os error (\d+)\)|\bOs \{ code: (\d+)")
    _SQLITE_FULL = "database or disk is full"  # SQLite's word for ENOSPC (an MLflow store under a full home)

    @classmethod
    def reason(cls, error: BaseException) -> str | None:
        """What the file system refused, for `error` or an exception it was raised from or during
        (e.g. "no space left on device: /lake/events"); None when none of them is a storage failure."""
        seen: set[int] = set()
        pending: list[BaseException | None] = [error]
        while pending:
            current = pending.pop(0)
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            if isinstance(current, OSError) and current.errno in cls.REASONS:
                where = f": {current.filename}" if current.filename else ""
                return f"{cls.REASONS[current.errno]}{where}"
            if cls._SQLITE_FULL in str(current):
                return cls.REASONS[errno.ENOSPC]
            for match in cls._OS_ERROR.finditer(str(current)):
                code = int(match.group(1) or match.group(2))
                if code in cls.REASONS:
                    return cls.REASONS[code]
            pending += [current.__cause__, current.__context__]
        return None
