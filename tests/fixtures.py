"""Test helpers: tiny model settings and a private labelled lake (synthetic data from
clickstream.pipeline.synthetic)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clickstream.pipeline.core.config import ModelConfig, Settings, load_settings
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.synthetic.sequences import synthetic_sequences, write_sequences

__all__ = ["labelled_lake", "synthetic_sequences", "tiny_settings", "write_sequences"]


def tiny_settings(settings: Settings, **train: object) -> Settings:
    """`settings` with a model and training run small enough for a test (seconds on 2 cores)."""
    return dataclasses.replace(
        settings,
        model=ModelConfig(item_dim=8, category_dim=4, event_type_dim=2, hidden_size=16, dropout=0.0),
        train=dataclasses.replace(
            settings.train,
            **{"epochs": 2, "batch_size": 128, "learning_rate": 2e-2, "min_positives": 5, **train},
        ),
    )


def labelled_lake(root: Path, sessions: int = 2000, days: int = 4, seed: int = 0, **train: object) -> Settings:
    """Tiny-model settings on a private lake and MLflow store under `root`, with synthetic sequences written."""
    settings = tiny_settings(load_settings(lake=str(root / "lake"), home=root / "state", environ={}), **train)
    write_sequences(Lake(settings.lake), synthetic_sequences(sessions=sessions, days=days, seed=seed))
    return settings
