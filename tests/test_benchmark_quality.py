"""The quality benchmark's split of the test sessions by how well their last item is measured."""

from __future__ import annotations

import numpy as np
import polars as pl

from benchmarks.quality import _by_evidence
from clickstream.models.evaluation import auc


def test_given_test_sessions_then_each_counts_in_the_bucket_of_its_last_items_training_sessions():
    # item "a" is held by 12 training sessions (twice in one of them: counted once), "b" by 1, "c" by none
    train = pl.DataFrame({"item_id": [["a", "a"], ["b", "a"]] + [["a"]] * 10 + [["x"]] * 100})
    test = pl.DataFrame({"item_id": [["b", "a"], ["a", "c"], ["a"], ["x", "b"], ["a", "x"], ["c", "x"]]})
    labels = np.array([1, 0, 0, 1, 1, 0], dtype=bool)
    scores = {
        "lstm": np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.4]),
        "gbm": np.full(6, 0.5),
        "ceiling": np.arange(6.0)[::-1],
        "truth": np.arange(6.0),
    }

    gaps = {gap.bucket: gap for gap in _by_evidence(train, test, labels, scores)}

    sessions = {name: gap.sessions for name, gap in gaps.items()}
    assert sessions == {"under 10": 2, "10 to 99": 2, "100 to 999": 2, "1,000 or more": 0}
    under_10 = np.array([False, True, False, True, False, False])  # ends on "c" (0 sessions) and "b" (1)
    assert gaps["under 10"].truth == auc(labels[under_10], scores["truth"][under_10])
    at_least_100 = np.array([False, False, False, False, True, True])  # ends on "x"
    assert gaps["100 to 999"].lstm == auc(labels[at_least_100], scores["lstm"][at_least_100]) == 1.0
    assert gaps["10 to 99"].gbm == 0.5
    assert gaps["under 10"].ceiling == 1.0 - gaps["under 10"].truth  # the reversed ranking
