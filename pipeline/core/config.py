"""The one place clickstream's settings are defined.

Every stage receives a `Settings` (built once from flags and the environment by
the CLI or the DAG) instead of reading the environment itself, so a value has
exactly one default and one way to override it.

Environment variables:
    CLICKSTREAM_HOME      local state folder (Airflow db, MLflow db)  [./.clickstream]
    CLICKSTREAM_LAKE      lake root, a path or an fsspec URL such as s3://bucket/lake  [./lake]
    CLICKSTREAM_LANDING   landing root with one folder per day, <landing>/YYYY-MM-DD/  [$CLICKSTREAM_HOME/landing]
    MLFLOW_TRACKING_URI   MLflow tracking store  [sqlite:///$CLICKSTREAM_HOME/mlflow.db]
    CLICKSTREAM_BAD_ROW_THRESHOLD   share of bad rows that fails an ingest, 0..1  [0.05]
    CLICKSTREAM_PROMOTION_MARGIN    validation AUC a challenger must beat the champion by, 0 <= x < 1  [0.002]
    CLICKSTREAM_CHECKPOINTS   training checkpoints, a path or fsspec URL every worker sees  [<lake>/_checkpoints]
    CLICKSTREAM_MAX_LINE_BYTES      longest raw line an ingest reads, >= 1  [1048576]
    CLICKSTREAM_MAX_FILE_BYTES      most (decompressed) bytes of one raw file, >= 1  [68719476736]
    CLICKSTREAM_MAX_GZIP_RATIO      most a raw .gz file may expand, times its size (past 16 MiB), >= 1  [100]
    CLICKSTREAM_SQL_TIMEOUT_S       time limit of one `clickstream sql` query, seconds > 0 and <= 3600  [60]
    CLICKSTREAM_SQL_MEMORY_MB       memory limit of one `clickstream sql` query, MiB >= 64 and <= 1048576  [2048]
    CLICKSTREAM_TRAIN_CPU_THREADS   torch threads of a training on the CPU, >= 1  [1]
    CLICKSTREAM_TRAIN_MEMORY_MB     data budget of one training rank, MiB >= 64: its shard stays resident
                                    when it fits, else streams  [half the GPU's memory, or of the host's per rank]
    CLICKSTREAM_BUCKETS   session-hash buckets of a new lake, 1..4096 (an existing lake keeps its own)  [1]
    CLICKSTREAM_TRAIN_EXECUTOR      the Airflow executor of the nightly's train task  [the default executor]
    CLICKSTREAM_TUNE_STORAGE        where `tune` keeps its Optuna studies: a database URL or a journal file
                                    [beside an SQL tracking store, else <lake>/_config/ or the home]
    AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL   an object-store endpoint; http:// allows plain HTTP  [AWS's]

A malformed or out-of-range value is a SettingError naming the variable and its range.
A local lake root and the home must be folders where they exist (and no part of their path a file).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from clickstream.pipeline.core.errors import SettingError

MODEL_NAME = "clickstream-buy-intent"
CHAMPION = "champion"
CHALLENGER = "challenger"
# The accepted ranges of the limits of one `clickstream sql` query: always finite, so a timer can hold them
SQL_TIMEOUT_MAX_S = 3600.0
MAX_BUCKETS = 4096  # a bucket per worker and more: partitions beyond it would be too many and too small
SQL_MEMORY_MIN_MB = 64
SQL_MEMORY_MAX_MB = 1 << 20  # 1 TiB


@dataclass(frozen=True)
class SequenceConfig:
    """How events become per-session sequences."""

    session_gap_minutes: float = 30.0  # inactivity that ends a cookie's session
    max_events: int = 200  # longer sessions keep their last `max_events` events
    exclude_event_types: tuple[str, ...] = ()  # e.g. ("add_to_cart",): left out of the input
    item_min_count: int = 2  # items seen fewer times in the training window map to OOV
    category_min_count: int = 1
    item_hash_buckets: int = 0  # > 0: unseen items share this many hashed indices instead of one OOV


@dataclass(frozen=True)
class ModelConfig:
    """LSTM sizes; the defaults are chosen by validation (docs/model.md, "Defaults and what was tried")."""

    # 0: no learned item embedding. The smoothed item buy-rate input carries what an item sells
    # like; a learned embedding overfitted on every window measured (benchmarks/RESULTS.md, "Model selection").
    item_dim: int = 0
    category_dim: int = 16
    event_type_dim: int = 4
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.1
    max_pool: bool = True  # the head also reads the max of the LSTM outputs over the session's steps
    session_inputs: bool = True  # ... and session aggregates of the inputs (models.lstm.SESSION_INPUTS)
    last_event: bool = True  # ... and the last event's own inputs (embeddings and continuous features)
    head_hidden: int = 32  # units of the head's hidden layer; 0: a linear head
    head_linear: bool = True  # ... plus a linear map of the head's inputs (the wide part; models.lstm)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for one training run."""

    epochs: int = 15
    batch_size: int = 4096
    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    patience: int = 3  # epochs without val AUC gain before stopping
    lr_decay: float = 0.5  # the learning rate is multiplied by this after each epoch without a val AUC gain
    validation_days: int = 2  # the last days of the window validate
    seed: int = 7
    device: str = "auto"  # auto | cpu | cuda
    # torch intra-op threads when training on the CPU (env CLICKSTREAM_TRAIN_CPU_THREADS); on 2 shared
    # cores 1 measured several times faster than torch's default of one per core (benchmarks/RESULTS.md, "demo")
    cpu_threads: int = 1
    bf16: bool = False  # forward pass under bf16 autocast (GPU); off until measured (benchmarks/RESULTS.md)
    tf32: bool = False  # float32 matmuls and cuDNN LSTM in TF32 (GPU); off: IEEE float32
    min_positives: int = 10  # fewer buyers than this in train or validation ends the run
    # a rank's data budget in MiB (env CLICKSTREAM_TRAIN_MEMORY_MB); None: half the GPU's memory, or
    # half the host's per rank on the CPU (models.training.inputs.data_budget)
    memory_mb: int | None = None
    # sessions per streamed buffer: batches are cut from one buffer at a time, so sessions mix within it
    shuffle_buffer: int = 262_144


@dataclass(frozen=True)
class Settings:
    """Where clickstream reads and writes, and how each stage behaves."""

    home: Path = Path(".clickstream")
    lake: str = "lake"
    landing: str = ".clickstream/landing"
    tracking_uri: str = "sqlite:///.clickstream/mlflow.db"
    model_name: str = MODEL_NAME
    bad_row_threshold: float = 0.05
    # about one standard error of the AUC difference of two models on the same ~100k validation
    # sessions (2 days at YOOCHOOSE's volume): noise alone rarely promotes (docs/model.md)
    promotion_margin: float = 0.002
    checkpoint_root: str | None = None  # None: <lake>/_checkpoints
    tune_storage: str | None = None  # None: beside the tracking store (models.training.tuning.study_storage)
    max_line_bytes: int = 1 << 20  # a longer raw line fails the ingest (bounds memory per line)
    max_file_bytes: int = 64 << 30  # decompressed
    max_gzip_ratio: int = 100  # decompressed / compressed size of a raw .gz: stops a gzip bomb early
    sql_timeout_s: float = 60.0
    sql_memory_mb: int = 2048
    buckets: int | None = None  # None: the lake's own count (1 for a new lake)
    sequences: SequenceConfig = field(default_factory=SequenceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def checkpoints(self) -> str:
        """Where training checkpoints go: storage every worker sees (a retry may run elsewhere)."""
        return self.checkpoint_root or f"{self.lake}/_checkpoints"

    @property
    def champion_uri(self) -> str:
        """The registered champion's model URI: what scoring and tracing load unless told otherwise."""
        return f"models:/{self.model_name}@{CHAMPION}"

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_settings(
    lake: str | None = None,
    home: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from explicit values, then the environment, then the defaults."""
    env = os.environ if environ is None else environ
    home_path = Path(home or env.get("CLICKSTREAM_HOME") or ".clickstream").absolute()
    home_origin = "home argument" if home else "CLICKSTREAM_HOME" if env.get("CLICKSTREAM_HOME") else "default"
    _require_folder(home_path, "home", home_origin)
    lake_root = lake or env.get("CLICKSTREAM_LAKE") or "lake"
    if "://" not in lake_root:
        lake_root = str(Path(lake_root).absolute())
        _require_folder(Path(lake_root), "lake root", "--lake" if lake else "CLICKSTREAM_LAKE")
    landing = env.get("CLICKSTREAM_LANDING") or str(home_path / "landing")
    tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home_path / 'mlflow.db'}"
    checkpoints = env.get("CLICKSTREAM_CHECKPOINTS") or None
    if checkpoints and "://" not in checkpoints:
        checkpoints = str(Path(checkpoints).absolute())
    limits = {
        name: int(env_number(env, f"CLICKSTREAM_{name.upper()}", getattr(Settings, name), low=1, integer=True))
        for name in ("max_line_bytes", "max_file_bytes", "max_gzip_ratio")
    }
    return Settings(
        home=home_path,
        lake=lake_root,
        landing=landing,
        tracking_uri=tracking,
        bad_row_threshold=env_number(env, "CLICKSTREAM_BAD_ROW_THRESHOLD", 0.05, low=0.0, high=1.0),
        promotion_margin=env_number(env, "CLICKSTREAM_PROMOTION_MARGIN", 0.002, low=0.0, high=1.0, high_open=True),
        checkpoint_root=checkpoints,
        tune_storage=env.get("CLICKSTREAM_TUNE_STORAGE") or None,
        sql_timeout_s=env_number(
            env, "CLICKSTREAM_SQL_TIMEOUT_S", 60.0, low=0.0, high=SQL_TIMEOUT_MAX_S, low_open=True
        ),
        sql_memory_mb=int(
            env_number(
                env, "CLICKSTREAM_SQL_MEMORY_MB", 2048, low=SQL_MEMORY_MIN_MB, high=SQL_MEMORY_MAX_MB, integer=True
            )
        ),
        buckets=int(env_number(env, "CLICKSTREAM_BUCKETS", 0, low=1, high=MAX_BUCKETS, integer=True)) or None,
        train=TrainConfig(
            cpu_threads=int(env_number(env, "CLICKSTREAM_TRAIN_CPU_THREADS", 1, low=1, integer=True)),
            memory_mb=int(env_number(env, "CLICKSTREAM_TRAIN_MEMORY_MB", 0, low=64, integer=True)) or None,
        ),
        **limits,
    )


def train_executor(environ: Mapping[str, str] | None = None) -> str | None:
    """The Airflow executor the nightly's train task asks for (CLICKSTREAM_TRAIN_EXECUTOR), None for the
    default one. Read when the DAG files are parsed, before any run's settings exist."""
    env = os.environ if environ is None else environ
    return env.get("CLICKSTREAM_TRAIN_EXECUTOR") or None


def object_store_options(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """What delta-rs and polars need beyond the AWS_* variables they read themselves: plain HTTP when the
    endpoint is an http:// URL (MinIO, a local S3)."""
    env = os.environ if environ is None else environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    return {"aws_allow_http": "true"} if endpoint.startswith("http://") else None


def env_number(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float:
    """The number in environment variable `name` (`default` when unset or empty), checked
    against [low, high] (an end excluded with `low_open` / `high_open`); a SettingError names
    the variable and the accepted range otherwise."""
    text = env.get(name, "").strip()
    if not text:
        return default
    accepted = f"{'an integer' if integer else 'a number'} {'>' if low_open else '>='} {_number(low)}" + (
        f" and {'<' if high_open else '<='} {_number(high)}" if high is not None else ""
    )
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise SettingError(f"{name}={text!r} is not a number; expected {accepted}") from None
    below = value < low or (low_open and value == low)
    above = high is not None and (value > high or (high_open and value == high))
    if not math.isfinite(value) or below or above:
        raise SettingError(f"{name}={text!r} is out of range; expected {accepted}")
    return value


def check_sql_limits(timeout_s: float, memory_mb: int) -> None:
    """A SettingError naming the flag, the variable and the accepted range unless the time limit is a
    finite number of seconds in (0, SQL_TIMEOUT_MAX_S] and the memory limit a whole number of MiB in
    [SQL_MEMORY_MIN_MB, SQL_MEMORY_MAX_MB] (`--timeout inf`, `nan` or `1e10`, `--memory-mb 99999999999999`)."""
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and 0 < timeout_s <= SQL_TIMEOUT_MAX_S):
        raise SettingError(
            f"SQL time limit {_shown(timeout_s)} s is out of range; expected a number of seconds > 0 and "
            f"<= {_number(SQL_TIMEOUT_MAX_S)} (--timeout, CLICKSTREAM_SQL_TIMEOUT_S)"
        )
    whole = isinstance(memory_mb, int) and not isinstance(memory_mb, bool)
    if not (whole and SQL_MEMORY_MIN_MB <= memory_mb <= SQL_MEMORY_MAX_MB):
        raise SettingError(
            f"SQL memory limit {memory_mb!r} MiB is out of range; expected an integer >= {SQL_MEMORY_MIN_MB} and "
            f"<= {SQL_MEMORY_MAX_MB} (1 TiB) (--memory-mb, CLICKSTREAM_SQL_MEMORY_MB)"
        )


def _shown(value: object) -> str:
    """A value as a message shows it: numbers in short form (1e+10, inf, nan)."""
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else repr(value)


def _number(value: float) -> str:
    """A range end as text: whole numbers without a decimal point or an exponent (1048576, not 1.04858e+06)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _require_folder(path: Path, what: str, origin: str) -> None:
    """A SettingError unless `path` is a folder or can become one: where it exists it must be a folder,
    and the nearest part of it that exists too (a home of /etc/passwd, or one under it, cannot be made)."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return
    if existing == path:
        raise SettingError(f"{what} {path} ({origin}) is not a folder")
    raise SettingError(f"{what} {path} ({origin}) cannot be a folder: {existing} is a file")
