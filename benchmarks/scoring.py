"""Batch scoring throughput, end to end from sequences/ to scores/ (and cookie_intent/).

    python -m benchmarks.scoring [--sessions N] [--days D] [--device auto|cpu|cuda]

Registers a default-size LSTM (pipeline.core.config.ModelConfig defaults, one epoch on 20k
sessions: quality is irrelevant here, size is what costs), writes N synthetic sessions over
D days to sequences/ (tests.fixtures.synthetic_sequences, 52k-item catalogue), then times
`load_scorer` + `score_with` over all days: reading Parquet, vocabulary mapping, the batched
no-grad forward, and the atomic writes. A per-stage breakdown on one day shows which part
bounds the rate. Target: >= 100k sessions/s on 2 CPU cores, >= 5M/s on one H100.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

N_ITEMS = 52_000  # YOOCHOOSE's catalogue, order of magnitude
TRAIN_SESSIONS = 20_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    import torch

    from benchmarks.results import peak_rss_gb, record
    from clickstream.features.sequences import read_sequences
    from clickstream.features.tensor_loader import load_tensors
    from clickstream.models.predict import predict
    from clickstream.models.scorer import load_scorer
    from clickstream.models.train import train_and_register
    from clickstream.pipeline.core.config import load_settings
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.serve.scoring import score_frame, score_with
    from clickstream.pipeline.synthetic.sequences import synthetic_sequences, write_sequences

    with tempfile.TemporaryDirectory(prefix="clickstream-bench-scoring-") as tmp:
        root = Path(tmp)
        trainer = load_settings(lake=str(root / "train-lake"), home=root / "state", environ={})
        trainer = dataclasses.replace(trainer, train=dataclasses.replace(trainer.train, device="cpu"))
        write_sequences(Lake(trainer.lake), synthetic_sequences(TRAIN_SESSIONS, days=4, n_items=N_ITEMS))
        print(train_and_register(trainer, None, None, epochs=1, device="cpu", promote=True))

        settings = load_settings(lake=str(root / "lake"), home=root / "state", environ={})
        lake = Lake(settings.lake)
        sequences = synthetic_sequences(args.sessions, days=args.days, seed=1, n_items=N_ITEMS)
        mean_events = sequences["n_events"].mean()
        days = write_sequences(lake, sequences)
        del sequences

        threads = torch.get_num_threads()
        began, cpu_began = time.perf_counter(), time.process_time()
        scorer = load_scorer(settings, device=args.device)
        loaded = time.perf_counter() - began
        summary = score_with(settings, scorer, days)
        total, cpu = time.perf_counter() - began, time.process_time() - cpu_began
        print(summary)

        # one day, stage by stage
        day = days[len(days) // 2]
        stages: dict[str, float] = {}
        t = time.perf_counter()
        frame = read_sequences(lake, day, day)
        stages["read sequences/ (Parquet)"] = time.perf_counter() - t
        t = time.perf_counter()
        tensors = load_tensors(frame, scorer.vocabulary)
        stages["vocabulary mapping -> flat tensors"] = time.perf_counter() - t
        t = time.perf_counter()
        predict(scorer.model, tensors, device=scorer.device)
        if scorer.device.startswith("cuda"):
            torch.cuda.synchronize()
        stages["batched no-grad forward (predict)"] = time.perf_counter() - t
        one_core = None
        if not scorer.device.startswith("cuda"):  # CPU time on one thread: robust to a shared machine
            torch.set_num_threads(1)
            c = time.process_time()
            predict(scorer.model, tensors, device="cpu")
            one_core = frame.height / (time.process_time() - c)
            torch.set_num_threads(threads)
        t = time.perf_counter()
        scored = score_frame(frame, scorer, dt.datetime.now(dt.UTC))
        stages["score_frame (tensors + forward + columns)"] = time.perf_counter() - t
        t = time.perf_counter()
        lake.write_partition("scores", day, scored, part="bench")
        stages["atomic Parquet write"] = time.perf_counter() - t

    rate = summary.sessions / total
    per_core = f"{one_core:,.0f} sessions per CPU-second" if one_core else "n/a on CUDA"
    load = os.getloadavg()[0]
    rows = "\n".join(
        f"| {name} | {seconds:.3f} | {frame.height / seconds:,.0f} |" for name, seconds in stages.items()
    )
    target = 5_000_000 if scorer.device.startswith("cuda") else 100_000
    body = f"""
`python -m benchmarks.scoring --sessions {args.sessions} --days {args.days} --device {args.device}`
scoring device `{scorer.device}`, torch threads {threads}, {os.cpu_count()} cores visible, 1-minute load
average {load:.1f} at the end (other work on a shared machine makes these figures a floor).
Model: default ModelConfig (registered from MLflow, loaded with its vocabulary), {N_ITEMS:,}-item catalogue,
mean {mean_events:.2f} events per session.

| end to end (sequences/ -> scores/ + cookie_intent/) | value |
|---|---|
| sessions | {summary.sessions:,} over {len(days)} days |
| load_scorer (MLflow download + unpickle) | {loaded:.2f} s |
| total wall time incl. load | {total:.2f} s |
| **throughput** | **{rate:,.0f} sessions/s** (target {target:,}/s: {"met" if rate >= target else "NOT met"}) |
| CPU time of this process (all threads) | {cpu:.2f} s: {summary.sessions / cpu:,.0f} sessions per CPU-second |
| peak RSS | {peak_rss_gb():.2f} GiB |

Breakdown on one day ({frame.height:,} sessions):

| stage | seconds | sessions/s |
|---|---|---|
{rows}

The same forward on ONE thread, measured in CPU time (what a core delivers, whatever else runs on the
machine): {per_core}.

Without a GPU the H100 target (>= 5M sessions/s) is not measured here:
run `python -m benchmarks.scoring --device cuda` on a GPU machine.
"""
    record("Batch scoring", body)
    print(body)


if __name__ == "__main__":
    main()
