"""What every rank of a training needs, and one rank's part of it.

A Job holds the pinned window (its shard units and counts, models.training.window), the
vocabulary with its buy counts per fold (counted once, by the launching process, streaming over
the training units), the configs and the model's initial weights: no session data. Each rank
takes its own share of the units (models.training.shards.assign) and reads them itself, resident
or streamed (models.training.inputs), so a rank never holds more than its shard or its budget.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.distributed as dist

from clickstream.features.tensor_loader import TENSOR_COLUMNS, load_tensors
from clickstream.features.tensors import SequenceTensors
from clickstream.features.vocabulary import Vocabulary, WindowCounts
from clickstream.models.device import resolve_device
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.training.fit import EpochStats, FitResult, fit
from clickstream.models.training.inputs import (
    TrainingInput,
    buffer_sessions,
    data_budget,
    resident_bytes,
)
from clickstream.models.training.shards import assign, gather_sessions, read_units
from clickstream.models.training.window import Part, TrainingWindow
from clickstream.pipeline.core.config import ModelConfig, SequenceConfig, TrainConfig
from clickstream.pipeline.core.schemas import SEQUENCES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A training of `window` by any number of ranks; `stop`, when set, says why there is none."""

    window: TrainingWindow
    vocabulary: Vocabulary | None
    model_config: ModelConfig
    model_sizes: tuple[int, int, int, int]
    initial_weights: dict[str, torch.Tensor]
    config: TrainConfig
    checkpoint_dir: str | None = None
    resume: bool | str = False
    stop: str | None = None

    @classmethod
    def stopped(cls, window: TrainingWindow, config: TrainConfig, reason: str) -> Job:
        """A job that tells every rank there is nothing to train, and why."""
        return cls(window, None, ModelConfig(), (0, 0, 0, 0), {}, config, stop=reason)

    def model(self) -> BuyIntentLSTM:
        """The model with the job's initial weights."""
        model = BuyIntentLSTM(self.model_config, *self.model_sizes)
        model.load_state_dict(self.initial_weights)
        return model


def count_window(window: TrainingWindow, config: SequenceConfig) -> Vocabulary:
    """The vocabulary and buy counts of the window's training sessions, read a unit at a time."""
    counts = WindowCounts()
    for frame in read_units(window.open(), window.train.units, ("session_id", "label", "item_id", "category")):
        counts.add(frame)
    return counts.vocabulary(config)


def part_input(
    window: TrainingWindow,
    vocabulary: Vocabulary,
    config: TrainConfig,
    part: Part,
    share: list[int],
    *,
    out_of_fold: bool,
    budget: int,
    device: torch.device,
) -> TrainingInput:
    """The sessions of `part`'s units numbered in `share`: resident when they fit `budget` bytes,
    else streamed in buffers of at most `config.shuffle_buffer` sessions."""
    lake = window.open()
    surveys = [part.surveys[i] for i in share]
    units = [survey.unit for survey in surveys]
    sessions, events = sum(s.sessions for s in surveys), sum(s.events for s in surveys)

    if resident_bytes(sessions, events) <= budget:
        # in session order, as the table is sorted: the same sessions in any number of buckets train alike
        columns = (*TENSOR_COLUMNS, "session_start")
        loaded = list(read_units(lake, units, columns)) or [pl.DataFrame(schema={n: SEQUENCES[n] for n in columns})]
        whole = pl.concat(loaded, rechunk=False).sort("session_start", "session_id")
        tensors = load_tensors(whole, vocabulary, out_of_fold=out_of_fold)
        del loaded, whole
        return TrainingInput.resident(tensors, device)
    size = buffer_sessions(budget, sessions, events, config.shuffle_buffer)
    log.info(
        "%s sessions stream in buffers of %s: holding them (%d MiB) would pass the data budget (%d MiB)",
        f"{sessions:,}",
        f"{size:,}",
        resident_bytes(sessions, events) >> 20,
        budget >> 20,
    )

    def buffers(seed: int | None) -> Iterator[SequenceTensors]:
        for frame in gather_sessions(read_units(lake, units, TENSOR_COLUMNS, seed=seed), size):
            yield load_tensors(frame, vocabulary, out_of_fold=out_of_fold)

    return TrainingInput.streamed(sessions, events, buffers, device)


def rank_inputs(
    window: TrainingWindow,
    vocabulary: Vocabulary,
    config: TrainConfig,
    *,
    rank: int = 0,
    world: int = 1,
    device: torch.device,
    local_ranks: int = 1,
) -> tuple[TrainingInput, TrainingInput]:
    """This rank's training and validation sessions: its own share of each part's units. The
    training share is resident when it fits the rank's data budget; the validation share gets
    what is left of it."""
    budget = data_budget(config.memory_mb, device, local_ranks)
    shares = [assign([s.sessions for s in part.surveys], world)[rank] for part in (window.train, window.val)]
    common = {"window": window, "vocabulary": vocabulary, "config": config, "device": device}
    train = part_input(part=window.train, share=shares[0], out_of_fold=True, budget=budget, **common)
    left = budget - (0 if train.is_streamed else resident_bytes(train.n_sessions, train.n_events))
    val = part_input(part=window.val, share=shares[1], out_of_fold=False, budget=left, **common)
    return train, val


def train_rank(
    job: Job,
    *,
    local_ranks: int = 1,
    lead: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Fit this process's part of `job` (one rank of `torch.distributed`'s group, or alone). `lead`:
    this rank writes the checkpoints and reports the epochs."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = resolve_device(job.config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # the rank's GPU under torchrun
    assert job.vocabulary is not None
    train, val = rank_inputs(
        job.window, job.vocabulary, job.config, rank=rank, world=world, device=device, local_ranks=local_ranks
    )
    return fit(
        train,
        val,
        job.model(),
        job.config,
        checkpoint_dir=job.checkpoint_dir,
        resume=job.resume,
        on_epoch=on_epoch,
        lead=lead,
    )


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's weights (names, shapes and bytes in state-dict order): equal weights,
    equal digests, on any machine."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()
