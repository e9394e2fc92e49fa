"""The champion gate: a challenger becomes `champion` only if it beats the current champion
on the same labelled validation sessions."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from clickstream.features.sequences import read_sequences
from clickstream.models.evaluation import auc
from clickstream.models.registry import VAL_END_TAG, VAL_START_TAG, alias_version, redacted, tracking_client
from clickstream.models.scorer import load_scorer
from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.errors import ClickstreamError, ModelNotFoundError, NoDataError
from clickstream.pipeline.core.lake import Lake


@dataclass(frozen=True)
class PromotionDecision:
    """What the champion gate decided for one challenger, with both validation AUCs."""

    version: str
    promoted: bool
    reason: str
    challenger_auc: float
    champion_version: str | None  # the champion before the decision
    champion_auc: float  # NaN when there was no loadable champion
    window: tuple[dt.date, dt.date]

    def __str__(self) -> str:
        verdict = "promoted to champion" if self.promoted else "not promoted"
        return f"v{self.version} {verdict}: {self.reason}"


def promote_if_better(
    settings: Settings, version: str, start: dt.date | None = None, end: dt.date | None = None
) -> PromotionDecision:
    """Move the `champion` alias to `version` only if its AUC beats the current champion's,
    both scored now on the same labelled sessions starting in [start, end] (default: the
    version's own validation days), each through its own vocabulary.

    Promotes without comparison when there is no champion or it cannot be loaded (the reason
    says so); never when the AUCs tie. The decision, reason and both AUCs become tags on the
    version. Re-running for a version that already is champion changes nothing.
    """
    client = tracking_client(settings)
    name = settings.model_name
    try:
        tags = client.get_model_version(name, version).tags
    except MlflowException:
        raise ModelNotFoundError(f"no version {version} of {name} in {redacted(settings.tracking_uri)}") from None
    start = start or _tag_date(tags, VAL_START_TAG, version)
    end = end or _tag_date(tags, VAL_END_TAG, version)
    frame = read_sequences(Lake(settings.lake), start, end)
    frame = frame.filter(frame["label"].is_not_null())
    if frame.is_empty():
        raise NoDataError(f"no labelled sessions in sequences/ between {start} and {end} to compare models on")
    labels = frame["label"].to_numpy()

    challenger_auc = auc(labels, load_scorer(settings, f"models:/{name}/{version}").score(frame))
    champion_version = alias_version(settings, CHAMPION)
    champion_auc = math.nan
    if champion_version is None:
        promoted, reason = True, "there was no champion"
    elif champion_version == str(version):
        promoted, reason = False, "it already is the champion"
    else:
        try:
            champion_auc = auc(labels, load_scorer(settings, f"models:/{name}/{champion_version}").score(frame))
        except ClickstreamError as error:
            promoted, reason = True, f"champion v{champion_version} could not be loaded ({error})"
        else:
            promoted = challenger_auc > champion_auc  # NaN (one class) compares False: keep the champion
            relation = "beats" if promoted else "does not beat"
            reason = (
                f"AUC {challenger_auc:.4f} {relation} champion v{champion_version}'s {champion_auc:.4f} "
                f"on {start}..{end}"
            )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    decision = PromotionDecision(
        str(version), promoted, reason, challenger_auc, champion_version, champion_auc, (start, end)
    )
    for key, value in {
        "promotion_decision": "promoted" if promoted else "rejected",
        "promotion_reason": reason,
        "promotion_window": f"{start}..{end}",
        "challenger_val_auc": f"{challenger_auc:.6f}",
        "champion_val_auc": f"{champion_auc:.6f}",
        "champion_version_before": champion_version or "none",
    }.items():
        client.set_model_version_tag(name, str(version), key, value)
    return decision


def _tag_date(tags: dict[str, str], key: str, version: str) -> dt.date:
    if key not in tags:
        raise ModelNotFoundError(f"model version {version} has no {key} tag; pass the comparison window explicitly")
    return dt.date.fromisoformat(tags[key])
