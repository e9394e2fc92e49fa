"""Which process owns a piece of shared state (a training run), and whether that process is gone."""

from __future__ import annotations

import datetime as dt
import os
import socket

# A process on another host cannot be checked; after this long its work is taken to be abandoned
# (longer than any task's timeout, so a live owner would already have been stopped by Airflow).
STALE_AGE = dt.timedelta(hours=6)


def owner() -> str:
    """`host:pid` of this process, as training runs record their owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_stale(holder: str, age: dt.timedelta) -> bool:
    """Whether what `holder` (an `owner()`) left `age` ago is abandoned: on this host once its process
    is gone; from another host after STALE_AGE."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return age >= STALE_AGE  # cannot check another host's processes
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False
