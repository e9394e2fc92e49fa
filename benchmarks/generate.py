"""Time `clickstream generate` at YOOCHOOSE scale and record it in RESULTS.md.

    python -m benchmarks.generate [--sessions 9250000] [--days 183] [--format yoochoose|events]

Writes under benchmarks/data/generate-<format>-<sessions>/ (replaced on every run), times
generate_logs end to end (simulation, CSV and truth Parquet writing), and reports throughput,
peak memory, file sizes and the truth AUC (p_buy against the drawn labels).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

from clickstream.pipeline.ingest.formats import GENERATED

DATA = Path(__file__).with_name("data")
YOOCHOOSE_SESSIONS = 9_250_000
YOOCHOOSE_DAYS = 183  # 2014-04-01 .. 2014-09-30, as the real data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=YOOCHOOSE_SESSIONS)
    parser.add_argument("--days", type=int, default=YOOCHOOSE_DAYS)
    parser.add_argument("--format", choices=GENERATED, default="yoochoose")
    args = parser.parse_args()

    import polars as pl
    from sklearn.metrics import roc_auc_score

    from benchmarks.results import peak_rss_gb, record
    from clickstream.pipeline.synthetic.generate import TRUTH_FILE, generate_logs

    out = DATA / f"generate-{args.format}-{args.sessions}"
    load = os.getloadavg()[0]  # the 2-core machine is shared: a busy one slows every figure
    began = time.perf_counter()
    summary = generate_logs(
        out, sessions=args.sessions, days=args.days, start_date=dt.date(2014, 4, 1), seed=0, fmt=args.format
    )
    seconds = time.perf_counter() - began
    truth = pl.read_parquet(out / TRUTH_FILE)
    auc = roc_auc_score(truth["label"].to_numpy(), truth["p_buy"].to_numpy())
    sizes = ", ".join(f"`{p.name}` {p.stat().st_size / 2**20:,.0f} MiB" for p in summary.files)
    body = f"""
`python -m benchmarks.generate --sessions {args.sessions} --days {args.days} --format {args.format}`

| sessions | events | buys | buying sessions | seconds | sessions/s | peak RSS | truth AUC |
|---:|---:|---:|---:|---:|---:|---:|---:|
| {summary.sessions:,} | {summary.events:,} | {summary.buys:,} | {summary.buyer_share:.2%} | {seconds:.1f} \
| {summary.sessions / seconds:,.0f} | {peak_rss_gb():.1f} GiB | {auc:.4f} |

Files: {sizes}. Load average when it started: {load:.1f}.
Target: 9.25M sessions in at most 60 s on 2 cores. Truth AUC: ROC AUC of the generator's p_buy
against its drawn labels, the ceiling for any model on this data.
"""
    record(f"generate ({args.format})", body)
    print(f"{summary} in {seconds:.1f} s; truth AUC {auc:.4f}; peak RSS {peak_rss_gb():.1f} GiB")


if __name__ == "__main__":
    main()
