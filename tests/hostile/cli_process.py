"""The `clickstream` command run as users run it: a fresh process, with the heavy libraries
it imported reported beside its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

HEAVY = ("torch", "mlflow", "sklearn", "lightgbm", "airflow", "matplotlib")
DEADLINE_S = 300
_CODE = """
import json, sys
from clickstream.pipeline.orchestrate.cli import main
path = sys.argv.pop(1)
try:
    main()
finally:
    with open(path, "w") as report:
        json.dump(sorted(m for m in {heavy!r} if m in sys.modules), report)
"""


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str
    heavy: list[str]  # heavy libraries the command imported

    @property
    def error_line(self) -> str:
        """The only line on stderr (the test fails when there are more)."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Finished:
    """`clickstream ARGS` in `cwd` with the test process's environment plus `env`."""
    report = cwd.parent / f".imported-{uuid.uuid4().hex}.json"  # beside cwd: nothing lands in it
    done = subprocess.run(
        [sys.executable, "-c", _CODE.format(heavy=HEAVY), str(report), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    heavy = json.loads(report.read_text()) if report.exists() else []
    report.unlink(missing_ok=True)
    return Finished(done.returncode, done.stdout, done.stderr, heavy)
