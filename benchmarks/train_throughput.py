"""Training throughput of the packed-sequence LSTM (forward + backward + step, sessions/s)
beside the naive loop everyone writes first, in the same run on the same data.

    python -m benchmarks.train_throughput [--device cpu|cuda] [--sessions N] [--naive-sessions N]

Fast path: the whole set resident on the device as flat tensors, length-bucketed batches
gathered from offsets, embeddings on the packed events only (models.batching + models.lstm).
Naive path: a per-session Dataset and a collate that pads each batch to its longest
session, embeds every padded slot and calls pack_padded_sequence (the model's reference path).
Both use the default ModelConfig and TrainConfig.batch_size. On CUDA the fast path is also
timed under bf16 autocast and on the machine's CPU cores (on a subset). Data is synthetic
with YOOCHOOSE's shape: mean 3.6 events per session, lengths capped at 200, Zipf items.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from benchmarks.results import CpuClock, Ratio, load_average, record
from clickstream.pipeline.synthetic.tensors import N_CATEGORIES, N_CONTINUOUS, N_EVENT_TYPES, N_ITEMS, synthetic_tensors

if TYPE_CHECKING:
    import torch

    from clickstream.features.tensors import SequenceTensors

def _default_model(device: torch.device) -> torch.nn.Module:
    import torch

    from clickstream.models.lstm import BuyIntentLSTM
    from clickstream.pipeline.core.config import ModelConfig

    torch.manual_seed(0)
    return BuyIntentLSTM(ModelConfig(), N_ITEMS, N_CATEGORIES, N_EVENT_TYPES, N_CONTINUOUS).to(device)


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def fast_throughput(
    tensors: SequenceTensors, device: torch.device, batch_size: int, *, bf16: bool = False
) -> tuple[float, float]:
    """(sessions/s, sessions/CPU-s) of one epoch of the production training step over resident, bucketed batches."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from clickstream.models.batching import iterate_batches, resident

    model = _default_model(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    data = resident(tensors, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def epoch(generator: torch.Generator, limit: int | None = None) -> None:
        for step, (_, batch) in enumerate(
            iterate_batches(data, batch_size, shuffle=True, generator=generator), 1
        ):
            with autocast:
                logits = model(batch)
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch.label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if limit is not None and step >= limit:
                break

    epoch(torch.Generator().manual_seed(1), limit=5)  # warm-up: allocator, cuDNN plans
    _sync(device)
    clock = CpuClock()
    epoch(torch.Generator().manual_seed(2))
    _sync(device)
    return _rates(tensors.n_sessions, clock)


class _SessionDataset:
    """The naive per-session Dataset: one Python object per session."""

    def __init__(self, tensors: SequenceTensors) -> None:
        self.tensors = tensors
        self.offsets = tensors.offsets.tolist()

    def __len__(self) -> int:
        return self.tensors.n_sessions

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        t = self.tensors
        return {
            "item": t.item[lo:hi],
            "category": t.category[lo:hi],
            "event_type": t.event_type[lo:hi],
            "stored": t.stored[:, lo:hi],
            "flags": t.flags[lo:hi],
            "start_hour": t.start_hour[i],
            "label": t.label[i],
        }


def _collate(samples: list[dict[str, torch.Tensor]]) -> SequenceTensors:
    """Per-sample collate back into a SequenceTensors (what forward_padded pads from)."""
    import torch

    from clickstream.features.tensors import SequenceTensors

    lengths = torch.tensor([len(s["item"]) for s in samples])
    offsets = torch.zeros(len(samples) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return SequenceTensors(
        offsets=offsets,
        item=torch.cat([s["item"] for s in samples]),
        category=torch.cat([s["category"] for s in samples]),
        event_type=torch.cat([s["event_type"] for s in samples]),
        stored=torch.cat([s["stored"] for s in samples], dim=1),
        flags=torch.cat([s["flags"] for s in samples]),
        start_hour=torch.stack([s["start_hour"] for s in samples]),
        label=torch.stack([s["label"] for s in samples]),
    )


def naive_throughput(tensors: SequenceTensors, device: torch.device, batch_size: int) -> tuple[float, float]:
    """(sessions/s, sessions/CPU-s) of the naive loop: DataLoader + per-sample collate, pad to the batch's
    longest session, embed every padded slot, pack_padded_sequence."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    model = _default_model(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(
        _SessionDataset(tensors),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(2),
    )
    _sync(device)
    clock = CpuClock()
    for batch in loader:
        batch = batch.to(device)
        loss = F.binary_cross_entropy_with_logits(model.forward_padded(batch), batch.label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    _sync(device)
    return _rates(tensors.n_sessions, clock)


def _rates(sessions: int, clock: CpuClock) -> tuple[float, float]:
    """(sessions per wall second, sessions per CPU-second of this process) since `clock` started."""
    wall, cpu = clock.elapsed()
    return sessions / wall, sessions / cpu


def main(argv: list[str] | None = None) -> None:
    import torch

    from clickstream.models.device import resolve_device
    from clickstream.pipeline.core.config import ModelConfig, TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sessions", type=int, default=200_000, help="sessions in the timed epoch")
    parser.add_argument("--naive-sessions", type=int, default=50_000, help="sessions the naive loop runs")
    parser.add_argument("--cpu-sessions", type=int, default=100_000, help="CPU comparison subset on --device cuda")
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--note", default="", help="a sentence recorded with the figures (e.g. machine load)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--quick", action="store_true", help="40k / 10k sessions (RESULTS-quick.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.naive_sessions, args.cpu_sessions = 40_000, 10_000, 20_000
    load_before = load_average()

    device = resolve_device(args.device)
    tensors = synthetic_tensors(args.sessions)
    lengths = tensors.lengths.double()
    batch = args.batch_size
    rows = [("packed, resident, bucketed", device.type, args.sessions, fast_throughput(tensors, device, batch))]
    if device.type == "cuda":
        bf16 = fast_throughput(tensors, device, batch, bf16=True)
        rows.append(("same, bf16 autocast", "cuda", args.sessions, bf16))
        cpu = fast_throughput(synthetic_tensors(args.cpu_sessions), torch.device("cpu"), batch)
        rows.append(("same code on CPU", "cpu", args.cpu_sessions, cpu))
    naive = naive_throughput(synthetic_tensors(args.naive_sessions), device, batch)
    rows.append(("naive: Dataset + collate + pad", device.type, args.naive_sessions, naive))

    (fast, fast_cpu), (naive_rate, naive_cpu) = rows[0][3], rows[-1][3]
    table = "\n".join(
        f"| {name} | {dev} | {n:,} | {rate:,.0f} | {per_cpu:,.0f} |" for name, dev, n, (rate, per_cpu) in rows
    )
    body = f"""Model {ModelConfig()}, batch size {args.batch_size}, torch {torch.__version__}, \
{torch.get_num_threads()} CPU threads. Synthetic YOOCHOOSE-shaped sessions: mean length \
{lengths.mean():.2f}, max {int(lengths.max())}. 1-minute load average {load_before:.1f} at the start, \
{load_average():.1f} at the end.

| loop | device | sessions timed | sessions/s (forward + backward + step) | sessions per CPU-second |
|---|---|---:|---:|---:|
{table}

Packed vs naive on {device.type}: **{fast_cpu / naive_cpu:.1f}x** the sessions per CPU-second \
({fast / naive_rate:.1f}x per wall second; wall figures are context, they follow the machine's load).

Where the time goes (torch.profiler, one CPU training step of the packed loop): the LSTM's forward and
backward over the packed batch dominate; the naive loop adds a Python `__getitem__` per session, a
per-sample collate, and embeds and runs padded slots."""
    if device.type == "cuda":
        body += f" GPU vs the same code on this machine's CPU cores: **{fast / rows[2][3][0]:.0f}x**."
    else:
        body += (
            " GPU figures (the targets are for one H100) need a GPU machine: run"
            " `python -m benchmarks.train_throughput --device cuda --sessions 9250000` there."
        )
    if args.note:
        body += f"\n\n{args.note}"
    print(body)
    ratios = [
        Ratio(f"training step ({device.type})", "naive loop: Dataset + collate + pad (same run)",
              f"{fast_cpu:,.0f} sessions/CPU-s", f"{naive_cpu:,.0f} sessions/CPU-s", fast_cpu / naive_cpu),
    ]
    if not args.no_record:
        record(f"train_throughput ({device.type})", body, ratios, quick=args.quick)


if __name__ == "__main__":
    main()
