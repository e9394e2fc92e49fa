"""Model quality on the generator's planted signals: LSTM vs LightGBM vs the truth, per world.

    python -m benchmarks.quality [--world W | --worlds all] [--sessions N] [--days D] [--test-days T]
                                 [--epochs E] [--device auto|cpu|cuda] [--seed S] [--seeds K]
                                 [--set train.batch_size=1024 --set model.dropout=0.3 ...]

For each world (pipeline.synthetic.sessions.WORLDS: default, counts, appeal, order) generates N
YOOCHOOSE sessions over D days, runs the real stages (ingest, sequences), trains with
`train_challenger` on the first D - T days (its last `validation_days` validate and
early-stop), then scores the last T days, never seen in training or validation, with the
registered LSTM, with the LightGBM baseline refitted on the same split, and with the
generator's true probabilities (truth.parquet p_buy), and with the data-limited ceiling
(benchmarks.ceiling: the true rule with each item's propensity estimated from the days before the
test days, the best any model of those days can expect). Reports test AUC and expected calibration
error (ECE) of each (the LSTM's also before its calibration), the LSTM's mean score against the buy
rate, and the validation AUCs the defaults are chosen on. A second table splits the test sessions by
how many training sessions hold the item each ends on: where an item's appeal is well measured and
where it rests on a handful of sessions, how far the ceiling is from the truth and each model from
the ceiling. With --seeds K, each world runs K times, each seed giving both the data and the model's
seed; the summary line is the worst case (the smallest LSTM - GBM margin, the mean score furthest
from the buy rate).
Targets: the LSTM's test AUC above its GBM's by at least 0.003 in every world and seed, at most 0.010
under the truth's on average, and its mean score within 5% of the buy rate on the test days.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import polars as pl

    from clickstream.models.evaluation import Evaluation
    from clickstream.pipeline.core.config import Settings

START = dt.date(2014, 4, 1)
HEADER = (
    "| world | test sessions | LSTM AUC | GBM AUC | ceiling AUC | truth AUC | LSTM - GBM | ceiling - LSTM "
    "| truth - LSTM | LSTM ECE (raw) | GBM ECE | truth ECE | LSTM mean score / buy rate | val AUC LSTM / GBM "
    "| best epoch | train s |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
)

# Test sessions by the training sessions that hold the item they end on: [low, high)
EVIDENCE_BUCKETS = (
    ("under 10", 0, 10),
    ("10 to 99", 10, 100),
    ("100 to 999", 100, 1000),
    ("1,000 or more", 1000, np.inf),
)
EVIDENCE_HEADER = (
    "| world | last item in training sessions | test sessions | truth - ceiling | ceiling - LSTM | ceiling - GBM "
    "| LSTM - GBM |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
)


@dataclass(frozen=True)
class EvidenceGap:
    """AUCs on the test sessions of one EVIDENCE_BUCKETS bucket, and how many there are."""

    bucket: str
    sessions: int
    lstm: float
    gbm: float
    ceiling: float
    truth: float


@dataclass(frozen=True)
class WorldResult:
    """One world's test scores and how training went."""

    world: str
    lstm: Evaluation
    lstm_raw: Evaluation  # the same LSTM before its calibration
    lstm_mean: float  # its mean (calibrated) score
    gbm: Evaluation
    ceiling: Evaluation  # benchmarks.ceiling
    truth: Evaluation
    val_auc: float
    gbm_val_auc: float
    best_epoch: int
    test_sessions: int
    seconds: float
    by_evidence: tuple[EvidenceGap, ...]


def main() -> None:
    from clickstream.pipeline.synthetic.sessions import WORLDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    worlds = parser.add_mutually_exclusive_group()
    worlds.add_argument("--world", default="default", choices=list(WORLDS))
    worlds.add_argument("--worlds", choices=["all"], help="every world, one table row each")
    parser.add_argument("--sessions", type=int, default=500_000)  # YOOCHOOSE volume: 50k a day
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--test-days", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="GROUP.FIELD=VALUE",
        help="override a setting, e.g. train.batch_size=1024 or model.dropout=0.3 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--seeds", type=int, default=1, help="seeds --seed, --seed + 1, ...: each one the data's and the model's"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    from benchmarks.results import peak_rss_gb, record
    from clickstream.pipeline.core.config import load_settings
    from clickstream.pipeline.core.progress import quiet_libraries

    quiet_libraries()  # as the CLI does: MLflow's bars and INFO lines would bury the table

    names = list(WORLDS) if args.worlds else [args.world]
    results, settings = [], None
    seeds = range(args.seed, args.seed + args.seeds)
    for name, seed in ((name, seed) for name in names for seed in seeds):
        with tempfile.TemporaryDirectory(prefix=f"clickstream-quality-{name}-") as tmp:
            settings = _with_overrides(load_settings(lake=str(Path(tmp) / "lake"), home=Path(tmp) / "state"), args.set)
            if args.seeds > 1:  # the model's seed moves with the data's
                settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, seed=seed))
            results.append(run_world(settings, Path(tmp), name, args, seed))
            print(_row(results[-1]), flush=True)

    assert settings is not None
    epochs = args.epochs or settings.train.epochs
    mean_gap = sum(r.truth.auc - r.lstm.auc for r in results) / len(results)
    mean_ceiling_gap = sum(r.ceiling.auc - r.lstm.auc for r in results) / len(results)
    mean_data_gap = sum(r.truth.auc - r.ceiling.auc for r in results) / len(results)
    wins = sum(r.lstm.auc > r.gbm.auc for r in results)
    worst_margin = min(results, key=lambda r: r.lstm.auc - r.gbm.auc)
    worst_mean = max(results, key=lambda r: abs(r.lstm_mean / r.lstm.positive_rate - 1))
    body = f"""
`python -m benchmarks.quality {"--worlds all" if args.worlds else f"--world {args.world}"} --sessions {args.sessions}\
{f" --seeds {args.seeds}" if args.seeds > 1 else ""}`:
per world {args.sessions:,} generated sessions over {args.days} days (seeds {seeds.start}..{seeds.stop - 1});
trained on the first {args.days - args.test_days} days (the last {settings.train.validation_days} of them validate and
early-stop), tested on the last {args.test_days} days (never seen in training or validation).

{HEADER}
{chr(10).join(_row(r) for r in results)}

{EVIDENCE_HEADER}
{chr(10).join(_evidence_row(r, gap) for r in results for gap in r.by_evidence)}

**Worst case: LSTM - GBM {worst_margin.lstm.auc - worst_margin.gbm.auc:+.4f} ({worst_margin.world}); mean score
{worst_mean.lstm_mean / worst_mean.lstm.positive_rate - 1:+.1%} off the buy rate ({worst_mean.world}). LSTM above GBM in
{wins} of {len(results)} runs; mean gap to truth {mean_gap:.4f}, of which the data leaves {mean_data_gap:.4f} (truth -
ceiling) and {mean_ceiling_gap:.4f} is the LSTM's to the ceiling.**

Model {settings.model}; training {dataclasses.asdict(dataclasses.replace(settings.train, epochs=epochs))}
(device {args.device}, data budget {settings.train.memory_mb or "default"} MiB). Peak RSS {peak_rss_gb():.1f} GiB.
"""
    # "quality (worlds)" is the run at 300,000 sessions per world; other sizes and single worlds name theirs
    section = "quality (worlds)" if args.worlds else f"quality ({args.world})"
    if not (args.worlds and args.sessions == 300_000):
        section = f"{section[:-1]}, {args.sessions:,})"
    if args.seeds > 1:
        section = f"{section[:-1]}, {args.seeds} seeds)"
    if settings.train.memory_mb is not None:  # CLICKSTREAM_TRAIN_MEMORY_MB: the streamed path's figures
        section = f"{section[:-1]}, {settings.train.memory_mb} MiB data budget)"
    record(section, body)
    print(body)


def run_world(settings: Settings, root: Path, world: str, args: argparse.Namespace, seed: int) -> WorldResult:
    """Generate, ingest, build sequences, train and score one world in `root`."""
    import polars as pl

    from benchmarks.ceiling import ceiling_scores
    from clickstream.features.sequences import build_sequences, read_sequences
    from clickstream.models.calibration import UNCALIBRATED
    from clickstream.models.evaluation import evaluate
    from clickstream.models.registry.loading import load_model
    from clickstream.models.training.baseline import fit_baseline
    from clickstream.models.training.train import train_challenger
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.ingest.ingest import ingest_files
    from clickstream.pipeline.synthetic.generate import generate_logs

    raw = root / "raw"
    generate_logs(raw, sessions=args.sessions, days=args.days, start_date=START, seed=seed, world=world)
    ingest_files(settings, "yoochoose", [raw / "yoochoose-clicks.dat"], [raw / "yoochoose-buys.dat"])
    build_sequences(settings, None, None)

    window_end = START + dt.timedelta(days=args.days - args.test_days - 1)
    test_from = window_end + dt.timedelta(days=1)
    began = time.perf_counter()
    summary = train_challenger(settings, START, window_end, epochs=args.epochs, device=args.device)
    seconds = time.perf_counter() - began

    lake = Lake(settings.lake, settings.buckets)
    labelled = pl.col("label").is_not_null()
    train = read_sequences(lake, START, summary.validation[0] - dt.timedelta(days=1)).filter(labelled)
    val = read_sequences(lake, *summary.validation).filter(labelled)
    test = read_sequences(lake, test_from, None).filter(labelled)
    truth = pl.read_parquet(raw / "truth.parquet").select("session_id", "p_buy")
    ceiling = ceiling_scores(
        world, sessions=args.sessions, days=args.days, start_date=START, seed=seed, test_from=test_from
    )
    test = test.join(truth, on="session_id", how="left").join(ceiling, on="session_id", how="left")
    test = test.sort("session_start", "session_id")

    labels, lengths = test["label"].to_numpy(), test["n_events"].to_numpy()
    scorer = load_model(settings, f"models:/{settings.model_name}/{summary.version}")
    scores = scorer.score(test)
    raw = dataclasses.replace(scorer, calibration=UNCALIBRATED).score(test)
    gbm = fit_baseline(train, val, seed=settings.train.seed).predict(test)
    p_buy = test["p_buy"].fill_null(test["label"].mean()).to_numpy()
    best = test["ceiling"].fill_null(test["label"].mean()).to_numpy()
    return WorldResult(
        world=world if args.seeds == 1 else f"{world}, seed {seed}",
        lstm=evaluate(labels, scores, lengths),
        lstm_raw=evaluate(labels, raw, lengths),
        lstm_mean=float(scores.mean()),
        gbm=evaluate(labels, gbm, lengths),
        ceiling=evaluate(labels, best, lengths),
        truth=evaluate(labels, p_buy, lengths),
        val_auc=summary.val_auc,
        gbm_val_auc=summary.gbm_val_auc,
        best_epoch=summary.best_epoch,
        test_sessions=test.height,
        seconds=seconds,
        by_evidence=_by_evidence(train, test, labels, {"lstm": scores, "gbm": gbm, "ceiling": best, "truth": p_buy}),
    )


def _by_evidence(
    train: pl.DataFrame, test: pl.DataFrame, labels: np.ndarray, scores: dict[str, np.ndarray]
) -> tuple[EvidenceGap, ...]:
    """The AUC of each of `scores` on the test sessions of each EVIDENCE_BUCKETS bucket."""
    import polars as pl

    from clickstream.models.evaluation import auc

    held = (
        train.select(pl.col("item_id").list.unique().alias("item")).explode("item").group_by("item").len("held")
    )
    last = test.select(pl.col("item_id").list.last().alias("item")).with_row_index("row")
    evidence = last.join(held, on="item", how="left").sort("row")["held"].fill_null(0).to_numpy()
    gaps = []
    for bucket, low, high in EVIDENCE_BUCKETS:
        inside = (evidence >= low) & (evidence < high)
        aucs = {name: auc(labels[inside], values[inside]) for name, values in scores.items()}
        gaps.append(EvidenceGap(bucket, int(inside.sum()), **aucs))
    return tuple(gaps)


def _row(r: WorldResult) -> str:
    return (
        f"| {r.world} | {r.test_sessions:,} | {r.lstm.auc:.4f} | {r.gbm.auc:.4f} | {r.ceiling.auc:.4f} | "
        f"{r.truth.auc:.4f} | {r.lstm.auc - r.gbm.auc:+.4f} | {r.ceiling.auc - r.lstm.auc:.4f} | "
        f"{r.truth.auc - r.lstm.auc:.4f} | {r.lstm.calibration_error:.4f} "
        f"({r.lstm_raw.calibration_error:.4f}) | {r.gbm.calibration_error:.4f} | {r.truth.calibration_error:.4f} | "
        f"{r.lstm_mean:.4f} / {r.lstm.positive_rate:.4f} | {r.val_auc:.4f} / {r.gbm_val_auc:.4f} | "
        f"{r.best_epoch} | {r.seconds:.0f} |"
    )


def _evidence_row(r: WorldResult, gap: EvidenceGap) -> str:
    return (
        f"| {r.world} | {gap.bucket} | {gap.sessions:,} | {gap.truth - gap.ceiling:.4f} | "
        f"{gap.ceiling - gap.lstm:.4f} | {gap.ceiling - gap.gbm:.4f} | {gap.lstm - gap.gbm:+.4f} |"
    )


def _with_overrides(settings: Settings, assignments: list[str]) -> Settings:
    """`settings` with `model.x=v` / `train.x=v` / `sequences.x=v` applied, each value cast to the field's type."""
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        group, _, name = key.partition(".")
        section = getattr(settings, group)
        current = getattr(section, name)
        cast = (lambda text: text.lower() in ("1", "true", "yes")) if isinstance(current, bool) else type(current)
        settings = dataclasses.replace(settings, **{group: dataclasses.replace(section, **{name: cast(value)})})
    return settings


if __name__ == "__main__":
    main()
