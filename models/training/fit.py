"""The fit loop: AdamW on BCE-with-logits over resident, length-bucketed batches, the learning
rate lowered after every epoch without a validation AUC gain, early stopping on validation AUC,
a checkpoint after every epoch, and resume after a kill.

A checkpoint that cannot be continued (empty, truncated, random bytes, another model's shapes,
another run's data or settings) is never half-loaded: `resume=True` stops with one line
(CorruptCheckpointError), `resume=RESUME_OR_RESTART` says so in a warning and starts clean,
with exactly the weights a run without `resume` would reach.

Reproducibility: every epoch reseeds the shuffle generator and torch's RNG (dropout) from
(seed, epoch, rank), so an epoch's randomness never depends on what ran before it, and a
resumed run reaches exactly the weights of an uninterrupted one on CPU. The caller seeds
the model's initialisation (`torch.manual_seed` before building it).

Under `torch.distributed` (see models.training.distributed) the same loop runs on every rank: each
rank trains on a strided shard of the epoch's batches through DistributedDataParallel,
every rank evaluates the same validation set (so all take the same early-stopping
decision without talking), and only rank 0 writes checkpoints and calls `on_epoch`.

On the CPU the loop runs on `config.cpu_threads` torch intra-op threads (default 1, see
models.device.cpu_threads); torch's own count is restored afterwards.

Precision: `config.bf16` runs the forward pass under bf16 autocast (the loss, the optimizer
state and validation stay float32); `config.tf32` lets float32 matmuls and cuDNN's LSTM use
TF32 on GPUs that have it. Both default off: plain IEEE float32 everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import log_loss, roc_auc_score
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel

from clickstream.features.tensors import SequenceTensors
from clickstream.models.batching import iterate_batches
from clickstream.models.device import cpu_threads, float32_precision, resolve_device
from clickstream.models.training.checkpoints import CheckpointStore, CorruptCheckpointError
from clickstream.models.training.inputs import TrainingInput
from clickstream.pipeline.core.errors import TrainingError
from clickstream.pipeline.core.progress import LiveStatus

if TYPE_CHECKING:
    from pathlib import Path

    from clickstream.models.lstm import BuyIntentLSTM
    from clickstream.pipeline.core.config import TrainConfig

log = logging.getLogger(__name__)

# `fit(resume=...)`: continue from the checkpoint when it can be continued, else start clean (with a warning)
RESUME_OR_RESTART = "or-restart"
PROGRESS_EVERY = 25  # batches between live loss readings (each one waits for the GPU)
# small training sets get smaller batches rather than a handful of steps: on 300k sessions (ten days at
# YOOCHOOSE volume) 500 steps per epoch gained +0.005 test AUC over 73 (benchmarks/RESULTS.md, "Model selection")
MIN_STEPS_PER_EPOCH = 500
MIN_BATCH_SIZE = 256


@dataclass(frozen=True)
class EpochStats:
    """One finished epoch. `seconds` and `sessions_per_s` time the training pass only
    (forward + backward + step, all ranks' sessions), not validation."""

    epoch: int  # 1-based
    train_loss: float  # mean BCE over the epoch's training sessions
    val_auc: float
    val_logloss: float
    seconds: float
    sessions_per_s: float


@dataclass
class FitResult:
    """The best epoch's model (on CPU, eval mode) and how training went."""

    model: BuyIntentLSTM
    history: list[EpochStats]
    best_epoch: int
    best_val_auc: float
    device: str
    resumed_epochs: int = 0  # epochs of `history` that came from the checkpoint, not this call


@dataclass
class _Progress:
    """What a checkpoint carries besides model and optimizer weights."""

    history: list[EpochStats]
    best_epoch: int = 0
    best_val_auc: float = -math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    stopped: bool = False

    @property
    def epochs_done(self) -> int:
        return len(self.history)


def _as_input(data: TrainingInput | SequenceTensors, device: torch.device, name: str) -> TrainingInput:
    """`data` as a TrainingInput; bare tensors (labels checked: none may be NaN) become resident ones."""
    if isinstance(data, TrainingInput):
        return data
    if torch.isnan(data.label).any():
        raise ValueError(f"{name} labels contain NaN: the caller must drop unlabelled sessions before fit")
    return TrainingInput.resident(data, device)


def _totals(*counts: int) -> list[int]:
    """`counts` summed over all ranks (as they are on one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(counts)
    totals = torch.tensor(counts, dtype=torch.int64)
    if dist.get_backend() == "nccl":
        totals = totals.cuda()
    dist.all_reduce(totals)
    return totals.tolist()


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_batch_size(n_sessions: int, batch_size: int, world_size: int = 1) -> int:
    """The per-rank batch size an epoch over `n_sessions` uses: `batch_size`, lowered (not below
    MIN_BATCH_SIZE) when it would give an epoch fewer than MIN_STEPS_PER_EPOCH optimizer steps.
    Large sets, where GPU throughput matters, keep `batch_size`; small ones still learn per epoch."""
    return min(batch_size, max(MIN_BATCH_SIZE, n_sessions // (MIN_STEPS_PER_EPOCH * world_size)))


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def _fingerprint(totals: list[int], config: TrainConfig, world: int) -> dict:
    """What must match for a checkpoint to continue this run (epochs and patience may change);
    `totals`: training sessions, training events and validation sessions over all ranks."""
    return {
        "train_sessions": totals[0],
        "train_events": totals[1],
        "val_sessions": totals[2],
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "lr_decay": config.lr_decay,
        "weight_decay": config.weight_decay,
        "grad_clip": config.grad_clip,
        "seed": config.seed,
        "bf16": config.bf16,
        "tf32": config.tf32,
        "world_size": world,
    }


def _save_checkpoint(
    store: CheckpointStore,
    model: BuyIntentLSTM,
    optimizer: torch.optim.Optimizer,
    progress: _Progress,
    fingerprint: dict,
) -> None:
    """Write the checkpoint atomically: a reader sees the previous one or this one, whole."""
    store.save({
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": [asdict(s) for s in progress.history],
        "best_epoch": progress.best_epoch,
        "best_val_auc": progress.best_val_auc,
        "best_weights": progress.best_weights,
        "stopped": progress.stopped,
    })


def _load_checkpoint(
    store: CheckpointStore, model: BuyIntentLSTM, optimizer: torch.optim.Optimizer, fingerprint: dict
) -> _Progress:
    """The checkpoint's progress, its weights and optimizer state loaded into `model` and `optimizer`.
    CorruptCheckpointError, with both left as they were, when it cannot be continued."""
    state = store.load()  # CorruptCheckpointError for bytes that are no checkpoint
    if state.get("fingerprint") != fingerprint:
        raise CorruptCheckpointError(f"checkpoint {store} belongs to a run with other data or settings")
    initial_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    initial_optimizer = copy.deepcopy(optimizer.state_dict())
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _check_optimizer_state(optimizer)
        progress = _Progress(
            history=[EpochStats(**s) for s in state["history"]],
            best_epoch=int(state["best_epoch"]),
            best_val_auc=float(state["best_val_auc"]),
            best_weights=state["best_weights"],
            stopped=bool(state["stopped"]),
        )
        _check_best_weights(progress, initial_model)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        model.load_state_dict(initial_model)
        optimizer.load_state_dict(initial_optimizer)
        detail = " ".join(str(error).split())[:200] or type(error).__name__
        raise CorruptCheckpointError(f"checkpoint {store} does not fit this model and run: {detail}") from None
    return progress


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """ValueError unless every per-weight tensor of the optimizer state (AdamW's moments) has its weight's shape."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    shapes = f"{tuple(value.shape)} for a {tuple(param.shape)} weight"
                    raise ValueError(f"optimizer state {name} of shape {shapes}")


def _check_best_weights(progress: _Progress, expected: dict[str, torch.Tensor]) -> None:
    """ValueError unless the best epoch's weights (if any) are this model's tensors and the epochs add up."""
    if not 0 <= progress.best_epoch <= progress.epochs_done:
        raise ValueError(f"best epoch {progress.best_epoch} of {progress.epochs_done} epochs")
    best = progress.best_weights
    if best is None:
        if progress.best_epoch:
            raise ValueError(f"no weights for best epoch {progress.best_epoch}")
        return
    if not isinstance(best, dict) or best.keys() != expected.keys():
        raise ValueError("the best epoch's weights are not this model's")
    for key, tensor in best.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
            raise ValueError(f"size mismatch for best weights {key}")


def _resumed(
    checkpoint: CheckpointStore,
    model: BuyIntentLSTM,
    optimizer: torch.optim.Optimizer,
    fingerprint: dict,
    resume: bool | str,
) -> _Progress:
    """The progress to continue from: the checkpoint's, or none when it cannot be continued and
    `resume` is RESUME_OR_RESTART (a warning says so); CorruptCheckpointError otherwise."""
    try:
        return _load_checkpoint(checkpoint, model, optimizer, fingerprint)
    except CorruptCheckpointError as error:
        if resume != RESUME_OR_RESTART:
            raise CorruptCheckpointError(
                f"{error}; delete it, or resume with --resume-or-restart to start this window clean"
            ) from None
        log.warning("%s; starting clean, as asked (--resume-or-restart)", error)
        return _Progress(history=[])


def epoch_learning_rate(config: TrainConfig, history: list[EpochStats]) -> float:
    """The next epoch's learning rate: `config.learning_rate` times `config.lr_decay` for every
    epoch of `history` that did not raise the best validation AUC. Once the validation AUC stalls,
    smaller steps settle the weights instead of jumping around the optimum (epoch-to-epoch AUC
    swings of a few thousandths at a constant rate). A function of the history alone, which the
    checkpoint holds, so a resumed run continues at the same rate."""
    best, rate = -math.inf, config.learning_rate
    for stats in history:
        if stats.val_auc > best:
            best = stats.val_auc
        else:
            rate *= config.lr_decay
    return rate


def validation_metrics(model: BuyIntentLSTM, val: TrainingInput) -> tuple[float, float]:
    """(ROC AUC, log loss) of the model's probabilities on the validation sessions of all ranks
    (each rank scores its own; the scores are gathered); both classes must occur."""
    scores, labels = gather_scores(*val.scores(model))
    if np.unique(labels).size < 2:
        raise TrainingError("the validation set holds only one class; widen the window or the validation days")
    scores = scores.astype(np.float64)
    return float(roc_auc_score(labels, scores)), float(log_loss(labels, scores, labels=[0.0, 1.0]))


def gather_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (scores, labels), float32, concatenated in rank order, on every rank."""
    _, world = _rank_and_world()
    if world == 1:
        return scores, labels
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    local = torch.from_numpy(np.stack([scores, labels]).astype(np.float32)).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[1]], dtype=torch.int64, device=device))
    longest = int(max(size.item() for size in sizes))
    padded = torch.zeros(2, longest, dtype=torch.float32, device=device)
    padded[:, : local.shape[1]] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    both = torch.cat([part[:, : int(size.item())] for part, size in zip(gathered, sizes, strict=True)], dim=1).cpu()
    return both[0].numpy(), both[1].numpy()


def _batches(train: TrainingInput, batch_size: int, seed: int) -> Iterator[SequenceTensors]:
    """One epoch's length-bucketed batches of this rank's sessions, buffer by buffer, in an order
    drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    for buffer in train.buffers(seed):
        for _, batch in iterate_batches(buffer, batch_size, shuffle=True, generator=generator):
            yield batch


def _train_epoch(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train: TrainingInput,
    config: TrainConfig,
    epoch: int,
    batch_size: int,
    device: torch.device,
    status: LiveStatus | None,
) -> tuple[float, float, int]:
    """(mean training loss, seconds, sessions trained on, all ranks). Raises TrainingError on NaN/inf loss."""
    rank, world = _rank_and_world()
    seed = _epoch_seed(config.seed, epoch, rank)
    torch.manual_seed(seed)  # dropout masks
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    step = 0
    uneven = Join([net]) if world > 1 else contextlib.nullcontext()  # shards differ in size
    with uneven:
        step = _steps(net, optimizer, _batches(train, batch_size, seed), config, loss_sum, seen, status)
    if status is not None:
        status.update(step % PROGRESS_EVERY)
    if world > 1:
        totals = torch.stack([loss_sum, seen])
        dist.all_reduce(totals)
        loss_sum, seen = totals[0], totals[1]
    mean_loss = float(loss_sum / seen) if float(seen) else math.nan  # waits for the device: the epoch's timing
    seconds = time.perf_counter() - start
    if not math.isfinite(mean_loss):
        raise TrainingError(f"training loss became {mean_loss} in epoch {epoch}; lower the learning rate")
    return mean_loss, seconds, int(seen)


def _steps(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[SequenceTensors],
    config: TrainConfig,
    loss_sum: torch.Tensor,
    seen: torch.Tensor,
    status: LiveStatus | None,
) -> int:
    """Train on `batches`, adding each batch's loss and sessions to `loss_sum` and `seen`; the steps run."""
    _, world = _rank_and_world()
    step = 0
    for step, batch in enumerate(batches, 1):
        with torch.autocast(loss_sum.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = net(batch)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizer.step()
        loss_sum += loss.detach() * batch.n_sessions
        seen += batch.n_sessions
        if step % PROGRESS_EVERY == 0:
            running = float(loss_sum / seen)
            if world == 1 and not math.isfinite(running):
                break  # under DDP every rank must run the same steps; the epoch-end check raises
            if status is not None:
                status.update(PROGRESS_EVERY, loss=running)
    return step


def fit(
    train: TrainingInput | SequenceTensors,
    val: TrainingInput | SequenceTensors,
    model: BuyIntentLSTM,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool | str = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    lead: bool | None = None,
) -> FitResult:
    """Train `model` on `train` (labels 0/1, no NaN), early-stopping on `val` AUC; both are this
    rank's own sessions. `lead` (default: rank 0) writes the checkpoints and calls `on_epoch`.

    Runs up to `config.epochs` epochs of `epoch_batch_size(...)`-session batches per rank and
    stops after `config.patience` epochs without a validation AUC gain. With `checkpoint_dir` (a
    path or fsspec URL, models.training.checkpoints), `<checkpoint_dir>/last.pt` is rewritten atomically
    after every epoch; `resume=True` continues from it (or starts fresh when it does not exist)
    and reaches the same weights as an uninterrupted run; a checkpoint it cannot continue raises
    CorruptCheckpointError (a TrainingError), or, with `resume=RESUME_OR_RESTART`, is passed over
    with a warning for a clean start. Deterministic for `config.seed` on CPU.
    Raises TrainingError on a NaN/inf loss or a one-class validation set. The returned model holds
    the best epoch's weights, on CPU, in eval mode.
    """
    if resume not in (False, True, RESUME_OR_RESTART):
        raise ValueError(f"resume must be False, True or {RESUME_OR_RESTART!r}, not {resume!r}")
    rank, world = _rank_and_world()
    lead = rank == 0 if lead is None else lead
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # the rank's GPU under torchrun
    train, val = _as_input(train, device, "train"), _as_input(val, device, "validation")
    totals = _totals(train.n_sessions, train.n_events, val.n_sessions)
    for name, sessions in (("train", totals[0]), ("validation", totals[2])):
        if sessions == 0:
            raise TrainingError(f"the {name} set has no sessions")
    model.to(device)
    net: torch.nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=device.type == "cuda",
    )
    fingerprint = _fingerprint(totals, config, world)
    checkpoint = CheckpointStore(checkpoint_dir) if checkpoint_dir is not None else None
    progress = _Progress(history=[])
    if resume and checkpoint is not None and checkpoint.exists():
        progress = _resumed(checkpoint, model, optimizer, fingerprint, resume)
    resumed_epochs = progress.epochs_done

    batch_size = epoch_batch_size(totals[0], config.batch_size, world)
    n_batches = math.ceil(train.n_sessions / batch_size)  # about: a buffer's last batch may be short
    status = LiveStatus("train", total=(config.epochs - resumed_epochs) * n_batches, unit="batches") if lead else None
    with (
        float32_precision(tf32=config.tf32),
        cpu_threads(device, config.cpu_threads),
        status or contextlib.nullcontext(),  # a failed fit's error says where it stopped
    ):
        for epoch in range(progress.epochs_done + 1, config.epochs + 1):
            if progress.stopped:
                break
            for group in optimizer.param_groups:
                group["lr"] = epoch_learning_rate(config, progress.history)
            loss, seconds, seen = _train_epoch(net, optimizer, train, config, epoch, batch_size, device, status)
            val_auc, val_logloss = validation_metrics(model, val)
            stats = EpochStats(epoch, loss, val_auc, val_logloss, seconds, seen / max(seconds, 1e-9))
            progress.history.append(stats)
            if val_auc > progress.best_val_auc:
                progress.best_epoch, progress.best_val_auc = epoch, val_auc
                progress.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            progress.stopped = epoch - progress.best_epoch >= config.patience
            if lead:
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, model, optimizer, progress, fingerprint)
                if status is not None:
                    status.update(0, loss=loss, val_auc=val_auc)
                if on_epoch is not None:
                    on_epoch(stats)

    model.to("cpu")
    if progress.best_weights is not None:
        model.load_state_dict(progress.best_weights)
    return FitResult(
        model.eval(), progress.history, progress.best_epoch, progress.best_val_auc, str(device), resumed_epochs
    )
