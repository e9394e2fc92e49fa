"""Which machines train together, and the torchrun command line that brings one machine's ranks to
them. Light on purpose: the CLI checks `--nodes`, `--node-rank` and `--rendezvous` before it loads
torch."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from clickstream.pipeline.core.errors import TrainingError

RENDEZVOUS_ID = "clickstream-train"


@dataclass(frozen=True)
class Nodes:
    """Which machines train together: `count` of them, this one `rank`, meeting at `rendezvous`
    (HOST:PORT of torchrun's c10d rendezvous, None on one machine)."""

    count: int = 1
    rank: int = 0
    rendezvous: str | None = None

    def check(self) -> None:
        """TrainingError (one line) unless the three agree."""
        if self.count < 1 or not 0 <= self.rank < self.count:
            raise TrainingError(f"--node-rank must be in 0..{self.count - 1} for --nodes {self.count}, not {self.rank}")
        if self.count > 1 and not self.rendezvous:
            raise TrainingError("--nodes above 1 needs --rendezvous HOST:PORT, the address every node can reach")
        host, _, port = (self.rendezvous or "").rpartition(":")
        if self.rendezvous and (not host or not port.isdigit()):
            raise TrainingError(f"--rendezvous must be HOST:PORT, not {self.rendezvous!r}")

    def torchrun(self, ranks: int) -> list[str]:
        """The torchrun command line for `ranks` processes on this machine."""
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--max-restarts=0"]
        if self.count == 1:
            return [*command, "--standalone"]
        return [
            *command,
            f"--nnodes={self.count}",
            f"--node-rank={self.rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={self.rendezvous}",
            f"--rdzv-id={RENDEZVOUS_ID}",
        ]
