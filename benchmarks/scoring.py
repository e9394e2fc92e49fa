"""Batch scoring: the LSTM beside two LightGBM peers on the same sessions in the same run, in
CPU-seconds, then end to end from sequences/ to scores/ (and cookie_intent/).

    python -m benchmarks.scoring [--sessions N] [--days D] [--device auto|cpu|cuda] [--quick]

Registers a default-size LSTM (pipeline.core.config.ModelConfig defaults, one epoch on 20k
sessions: quality is irrelevant here, size is what costs), fits the project's LightGBM baseline
(models.training.baseline: per-session aggregates with buy rates) on the same sessions and a LightGBM with
as many trees on plain polars list aggregates, writes N synthetic sessions over D days to
sequences/ (pipeline.synthetic.sequences, 52k-item catalogue), then, day by day on frames already
read, scores every day with each of the three back to back (SEQUENCES frame -> probabilities:
features or tensors, then the model), twice, in CPU-seconds of this process. Then times
`load_model` + `score_with` over all days: reading Parquet, tensors, forward, atomic writes.
Target: the LSTM scores at least as many sessions per CPU-second as the baseline LightGBM.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

N_ITEMS = 52_000  # YOOCHOOSE's catalogue, order of magnitude


def list_aggregates(sequences: pl.DataFrame) -> np.ndarray:
    """The plain per-session features anyone writes first: polars list aggregates of the columns
    as stored (length, distinct items and categories, gap and dwell statistics, start time)."""
    gap, dwell, item = pl.col("log_gap_prev").list, pl.col("log_dwell").list, pl.col("item_id").list
    return (
        sequences.select(
            "n_events",
            "start_hour",
            "start_weekday",
            item.n_unique().alias("items"),
            pl.col("category").list.n_unique().alias("categories"),
            gap.sum().alias("gap_sum"),
            gap.max().alias("gap_max"),
            gap.last().alias("gap_last"),
            dwell.sum().alias("dwell_sum"),
            dwell.max().alias("dwell_max"),
            dwell.mean().alias("dwell_mean"),
            (item.last() == item.first()).alias("revisit"),
        )
        .cast(pl.Float32)
        .fill_null(float("nan"))
        .to_numpy()
    )


def fit_list_aggregates(train: pl.DataFrame, rounds: int):
    """A LightGBM with the baseline's parameters and `rounds` trees on `list_aggregates`."""
    import lightgbm as lgb

    from clickstream.models.training.baseline import PARAMS

    data = lgb.Dataset(list_aggregates(train), label=train["label"].to_numpy())
    return lgb.train({**PARAMS, "seed": 7}, data, num_boost_round=rounds)


def cpu_seconds(work: Callable[[pl.DataFrame], object], frames: list[pl.DataFrame]) -> float:
    """CPU-seconds of this process (all threads) for `work` over every frame."""
    from benchmarks.results import CpuClock

    clock = CpuClock()
    for frame in frames:
        work(frame)
    return clock.elapsed()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--train-sessions", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="200k sessions over 4 days (RESULTS-quick.md)")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.days, args.train_sessions = 200_000, 4, 8_000

    import torch

    from benchmarks.results import CpuClock, Ratio, load_average, peak_rss_gb, record
    from clickstream.features.sequences import read_sequences
    from clickstream.features.tensor_loader import load_tensors
    from clickstream.models.predict import predict
    from clickstream.models.registry.loading import load_model
    from clickstream.models.training.baseline import fit_baseline
    from clickstream.models.training.train import train_and_register
    from clickstream.pipeline.core.config import load_settings
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.serve.scoring import score_with
    from clickstream.pipeline.synthetic.sequences import synthetic_sequences, write_sequences

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="clickstream-bench-scoring-") as tmp:
        root = Path(tmp)
        trainer = load_settings(lake=str(root / "train-lake"), home=root / "state", environ={})
        trainer = dataclasses.replace(trainer, train=dataclasses.replace(trainer.train, device="cpu"))
        train_frame = synthetic_sequences(args.train_sessions, days=4, n_items=N_ITEMS)
        write_sequences(Lake(trainer.lake), train_frame)
        print(train_and_register(trainer, None, None, epochs=1, device="cpu", promote=True))
        last_day = pl.col("session_start").dt.date() == train_frame["session_start"].dt.date().max()
        baseline = fit_baseline(train_frame.filter(~last_day), train_frame.filter(last_day))
        trees = baseline.booster.num_trees()
        aggregates = fit_list_aggregates(train_frame.filter(~last_day), trees)

        settings = load_settings(lake=str(root / "lake"), home=root / "state", environ={})
        lake = Lake(settings.lake, settings.buckets)
        sequences = synthetic_sequences(args.sessions, days=args.days, seed=1, n_items=N_ITEMS)
        mean_events = sequences["n_events"].mean()
        days = write_sequences(lake, sequences)
        del sequences

        scorer = load_model(settings, device=args.device)
        frames = [read_sequences(lake, day, day) for day in days]
        n = sum(frame.height for frame in frames)
        tensors = [load_tensors(frame, scorer.vocabulary) for frame in frames]
        peers: dict[str, Callable[[pl.DataFrame], object]] = {
            "LSTM (tensors + forward)": scorer.score,
            "LightGBM, baseline features": baseline.predict,
            "LightGBM, list aggregates": lambda frame: aggregates.predict(list_aggregates(frame)),
        }
        cpu = dict.fromkeys(peers, 0.0)
        forward = 0.0
        for _ in range(2):  # alternating rounds: a load change hits every peer alike
            for name, work in peers.items():
                cpu[name] += cpu_seconds(work, frames) / 2
            clock = CpuClock()
            for t in tensors:
                predict(scorer.model, t, device=scorer.device)
            forward += clock.elapsed()[1] / 2
        del tensors

        clock = CpuClock()
        scorer = load_model(settings, device=args.device)
        loaded = clock.elapsed()[0]
        summary = score_with(settings, scorer, days)
        total, total_cpu = clock.elapsed()
        print(summary)

    rate = {name: n / seconds for name, seconds in cpu.items()}
    lstm, gbm, plain = rate.values()
    lstm_name, gbm_name, plain_name = cpu
    ratios = [
        Ratio("batch scoring, LSTM", "LightGBM on the baseline features (models/training/baseline.py)",
              f"{lstm:,.0f} sessions/CPU-s", f"{gbm:,.0f} sessions/CPU-s", cpu[gbm_name] / cpu[lstm_name], 1.0),
        Ratio("batch scoring, LSTM", "LightGBM on plain list aggregates",
              f"{lstm:,.0f} sessions/CPU-s", f"{plain:,.0f} sessions/CPU-s", cpu[plain_name] / cpu[lstm_name]),
    ]
    rows = "\n".join(f"| {name} | {cpu[name]:.2f} | {rate[name]:,.0f} |" for name in cpu)
    load = load_average()
    command = "--quick" if args.quick else f"--sessions {args.sessions} --days {args.days} --device {args.device}"
    body = f"""
`python -m benchmarks.scoring {command}`: scoring device `{scorer.device}`, torch threads
{torch.get_num_threads()} ({os.cpu_count()} cores visible), 1-minute load average {load_before:.1f} at the start,
{load:.1f} at the end. Model: default ModelConfig (registered in MLflow, loaded with its vocabulary),
{N_ITEMS:,}-item catalogue, {n:,} sessions over {len(days)} days, mean {mean_events:.2f} events per session.
LightGBMs: {trees} trees each (the baseline early-stopped; the list-aggregate one gets as many),
{baseline.booster.num_feature()} and {aggregates.num_feature()} features.

Same frames (already read), each peer over every day, two alternating rounds, CPU-seconds of this process:

| SEQUENCES frame -> probabilities | CPU-s | sessions per CPU-second |
|---|---:|---:|
{rows}

The forward alone (`predict` on tensors already built) took {forward:.2f} CPU-s:
{forward / cpu[lstm_name]:.0%} of the LSTM's scoring; the rest is `load_tensors` (vocabulary mapping, flat tensors).

Where the time went (torch.profiler on the forward, one thread, before the change): the LSTM was 85% of
scoring and inside it ragged PackedSequence batches ran step by step (separate `addmm`, `sigmoid_`,
`tanh_` per step: 60% of the forward's CPU), because torch's fused oneDNN kernel only takes batches whose
sessions all have one length; 16k-session batches also spilled the per-step gate block out of cache, and a
second intra-op thread spent more CPU in synchronisation than it saved (2 threads: 12-25k sessions/CPU-s
against 84k on one under load 6-15). Now `models/predict.py` batches sessions of one length, 4,096 at most,
on one intra-op thread: 2.5x the sessions per CPU-second of the forward, scores equal to 1e-7.

| end to end (sequences/ -> scores/ + cookie_intent/) | value |
|---|---|
| load_model (MLflow download + unpickle) | {loaded:.2f} s |
| total wall time incl. load | {total:.2f} s: {summary.sessions / total:,.0f} sessions/s (context: load-dependent) |
| CPU time of this process (all threads) | {total_cpu:.2f} s: {summary.sessions / total_cpu:,.0f} sessions/CPU-s |
| peak RSS | {peak_rss_gb():.2f} GiB |

GPU scoring is measured with `--device cuda` on a machine that has one.
"""
    record("Batch scoring", body, ratios, quick=args.quick)
    print(body)


if __name__ == "__main__":
    main()
