"""Model quality on the generator's planted signal: LSTM vs LightGBM vs the truth.

    python -m benchmarks.quality [--sessions N] [--days D] [--test-days T] [--epochs E] [--device auto|cpu|cuda]
                                 [--set train.batch_size=1024 --set model.dropout=0.3 ...]

Generates N YOOCHOOSE sessions over D days (pipeline.synthetic.generate), runs the real stages
(ingest, sequences), trains with `train_challenger` on the first D - T days (its last
`validation_days` validate and early-stop), then scores the last T days, never seen in
training or validation, with the registered LSTM, with the LightGBM baseline refitted on
the same split, and with the generator's true probabilities (truth.parquet p_buy).
Targets: LSTM test AUC > GBM test AUC, and within 0.03 of the truth's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clickstream.pipeline.core.config import Settings

START = dt.date(2014, 4, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=500_000)  # YOOCHOOSE volume: 50k a day
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--test-days", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="GROUP.FIELD=VALUE",
        help="override a setting, e.g. train.batch_size=1024 or model.dropout=0.3 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    import polars as pl

    from benchmarks.results import peak_rss_gb, record
    from clickstream.features.sequences import build_sequences, read_sequences
    from clickstream.models.baseline import fit_baseline
    from clickstream.models.evaluation import evaluate
    from clickstream.models.scorer import load_scorer
    from clickstream.models.train import train_challenger
    from clickstream.pipeline.core.config import load_settings
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.ingest.ingest import ingest_files
    from clickstream.pipeline.synthetic.generate import generate_logs

    with tempfile.TemporaryDirectory(prefix="clickstream-quality-") as tmp:
        root = Path(tmp)
        settings = load_settings(lake=str(root / "lake"), home=root / "state")
        settings = _with_overrides(settings, args.set)
        began = time.perf_counter()
        raw = root / "raw"
        generate_logs(raw, sessions=args.sessions, days=args.days, start_date=START, seed=args.seed)
        ingest_files(settings, "yoochoose", [raw / "yoochoose-clicks.dat"], [raw / "yoochoose-buys.dat"])
        build_sequences(settings, None, None)
        prepared = time.perf_counter() - began

        window_end = START + dt.timedelta(days=args.days - args.test_days - 1)
        began = time.perf_counter()
        summary = train_challenger(settings, START, window_end, epochs=args.epochs, device=args.device)
        trained = time.perf_counter() - began

        lake = Lake(settings.lake)
        labelled = pl.col("label").is_not_null()
        train = read_sequences(lake, START, summary.validation[0] - dt.timedelta(days=1)).filter(labelled)
        val = read_sequences(lake, *summary.validation).filter(labelled)
        test = read_sequences(lake, window_end + dt.timedelta(days=1), None).filter(labelled)
        truth = pl.read_parquet(raw / "truth.parquet").select("session_id", "p_buy")
        test = test.join(truth, on="session_id", how="left").sort("session_start", "session_id")
        missing_truth = test["p_buy"].null_count()

        labels, lengths = test["label"].to_numpy(), test["n_events"].to_numpy()
        scorer = load_scorer(settings, f"models:/{settings.model_name}/{summary.version}")
        lstm = evaluate(labels, scorer.score(test), lengths)
        gbm = evaluate(labels, fit_baseline(train, val, seed=settings.train.seed).predict(test), lengths)
        oracle = evaluate(labels, test["p_buy"].fill_null(test["label"].mean()).to_numpy(), lengths)

    model, config = settings.model, dataclasses.replace(settings.train, epochs=args.epochs or settings.train.epochs)
    rows = [("LSTM (registered challenger)", lstm), ("LightGBM baseline, same split", gbm), ("truth p_buy", oracle)]
    table = "\n".join(
        f"| {name} | {e.auc:.4f} | {e.pr_auc:.4f} | {e.logloss:.4f} | {e.calibration_error:.4f} |" for name, e in rows
    )
    buckets = " / ".join(f"{k} {v:.3f}" for k, v in lstm.auc_by_length.items())
    verdict = (
        f"LSTM {'beats' if lstm.auc > gbm.auc else 'does NOT beat'} GBM by {lstm.auc - gbm.auc:+.4f}; "
        f"gap to truth {oracle.auc - lstm.auc:.4f} ({'within' if oracle.auc - lstm.auc <= 0.03 else 'NOT within'} 0.03)"
    )
    body = f"""
{args.sessions:,} generated sessions over {args.days} days (seed {args.seed}); trained on
{summary.window[0]}..{summary.window[1]} ({summary.train_sessions:,} sessions; the last
{settings.train.validation_days} days, {summary.val_sessions:,} sessions, validate), tested on the last
{args.test_days} days ({test.height:,} labelled sessions never seen; {missing_truth} without a truth row).

| scores on the test days | AUC | PR-AUC | log loss | calibration error |
| --- | --- | --- | --- | --- |
{table}

**{verdict}.** Validation AUC (early-stopping days): LSTM {summary.val_auc:.4f}, GBM {summary.gbm_val_auc:.4f};
best epoch {summary.best_epoch}. LSTM test AUC by session length: {buckets}.

Model {model}; training {dataclasses.asdict(config)} (device {args.device}).
Generate + ingest + sequences {prepared:.0f} s, train_challenger (LSTM + GBM + MLflow) {trained:.0f} s,
peak RSS {peak_rss_gb():.1f} GiB.
"""
    record("quality", body)
    print(body)


def _with_overrides(settings: Settings, assignments: list[str]) -> Settings:
    """`settings` with `model.x=v` / `train.x=v` / `sequences.x=v` applied, each value cast to the field's type."""
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        group, _, name = key.partition(".")
        section = getattr(settings, group)
        cast = type(getattr(section, name))
        settings = dataclasses.replace(settings, **{group: dataclasses.replace(section, **{name: cast(value)})})
    return settings


if __name__ == "__main__":
    main()
