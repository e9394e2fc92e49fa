"""Errors a user can cause. The CLI turns them into one-line messages and exit code 2;
anything else is a bug and fails loudly with its traceback."""


class ClickstreamError(Exception):
    """Base for user-facing errors: the message is the whole story, one line."""


class SettingError(ClickstreamError):
    """A setting from the environment or a flag is malformed or outside its accepted range."""


class InputError(ClickstreamError):
    """A raw input file cannot be read at all (missing, corrupt gzip, wrong format)."""


class BadRowThresholdError(ClickstreamError):
    """Too large a share of an ingest's rows went to the quarantine."""


class NoDataError(ClickstreamError):
    """A requested date range holds nothing to work on."""


class TrainingError(ClickstreamError):
    """A training run cannot produce a trustworthy model (NaN loss, one class, too few buyers)."""


class TrackingStoreError(ClickstreamError):
    """The MLflow tracking store (MLFLOW_TRACKING_URI) cannot be reached or opened."""


class ModelNotFoundError(ClickstreamError):
    """The model URI does not resolve in the configured registry."""


class PromotionError(ClickstreamError):
    """The champion cannot be changed as asked: the champion or the version cannot be loaded or
    compared, or the history holds no earlier champion to roll back to."""


class LakePathError(ClickstreamError):
    """A path would escape the lake root."""


class LakeConflictError(ClickstreamError):
    """A lake commit could not land: another writer changed the same rows at the same time, or
    the store refused the write."""


class LakeFormatError(ClickstreamError):
    """A lake table is not what the command needs: the layout before Delta tables, or a version
    it does not have."""
