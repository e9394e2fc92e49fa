"""The LightGBM baseline: per-session aggregates, leak-free item buy rates, row order, determinism."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from fixtures import synthetic_sequences

from clickstream.models.evaluation import auc
from clickstream.models.training.baseline import _chunked_matrix, _matrix, buy_rates, fit_baseline, session_features


@pytest.fixture(scope="module")
def split() -> tuple[pl.DataFrame, pl.DataFrame]:
    frame = synthetic_sequences(sessions=6000, days=4, seed=3)
    is_val = pl.col("session_start").dt.date() >= dt.date(2014, 4, 4)
    return frame.filter(~is_val), frame.filter(is_val)


def test_given_the_planted_signal_when_fitted_then_validation_auc_is_well_above_chance(split) -> None:
    train, val = split

    baseline = fit_baseline(train, val)

    assert auc(val["label"].to_numpy(), baseline.predict(val)) > 0.7


def test_given_the_same_data_and_seed_then_predictions_are_identical_and_follow_row_order(split) -> None:
    train, val = split
    first, second = fit_baseline(train, val, seed=1), fit_baseline(train, val, seed=1)

    scores = first.predict(val)

    assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_array_equal(scores, second.predict(val))
    np.testing.assert_array_equal(first.predict(val.reverse()), scores[::-1])


def test_given_the_same_sessions_in_another_row_order_then_the_model_is_the_same(split) -> None:
    train, val = split
    shuffled = fit_baseline(train.sample(fraction=1.0, shuffle=True, seed=5), val.reverse(), seed=1)

    np.testing.assert_array_equal(shuffled.predict(val), fit_baseline(train, val, seed=1).predict(val))


@pytest.mark.parametrize("out_of_fold", [True, False])
def test_given_features_made_in_chunks_then_the_matrix_equals_the_whole_frames(split, out_of_fold) -> None:
    train, _ = split
    rates = buy_rates(train)

    whole = _matrix(session_features(train, rates, out_of_fold=out_of_fold))

    np.testing.assert_array_equal(_chunked_matrix(train, rates, out_of_fold, chunk=997), whole)
    assert _chunked_matrix(train.head(0), rates, out_of_fold).shape == (0, whole.shape[1])


def test_given_items_seen_in_one_session_only_then_out_of_fold_rates_never_see_its_own_label() -> None:
    frame = synthetic_sequences(sessions=50, days=1, seed=5, n_items=10_000)
    flat = frame.select(
        pl.concat_str(pl.col("session_id").repeat_by("n_events").explode(), pl.lit("-"), pl.col("item_id").explode())
    ).to_series()
    offsets = np.concatenate([[0], np.cumsum(frame["n_events"].to_numpy())]).astype(np.int32)
    unique_items = frame.with_columns(
        item_id=pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets), flat.to_arrow()))
    )
    rates = buy_rates(unique_items)

    out_of_fold = session_features(unique_items, rates, out_of_fold=True)
    in_sample = session_features(unique_items, rates, out_of_fold=False)

    # every item's only session is its own: out of fold, all rates fall back to the prior
    assert np.allclose(out_of_fold["item_id_rate_max"].to_numpy(), rates.prior, atol=1e-6)
    buyers = unique_items["label"].to_numpy()
    assert (in_sample["item_id_rate_max"].to_numpy()[buyers] > rates.prior).all()


def test_given_sessions_then_features_have_one_row_per_session_in_order() -> None:
    frame = synthetic_sequences(sessions=300, days=2, seed=9)

    features = session_features(frame, buy_rates(frame), out_of_fold=False)

    assert features.height == frame.height
    np.testing.assert_array_equal(features["n_events"].to_numpy(), frame["n_events"].to_numpy())
    assert features.dtypes == [pl.Float32] * features.width


def test_given_purchases_counted_in_session_end_and_total_events_then_features_ignore_them() -> None:
    frame = synthetic_sequences(sessions=300, days=2, seed=9)
    rates = buy_rates(frame)
    leaky = frame.with_columns(
        session_end=pl.when("label").then(pl.col("session_end") + dt.timedelta(minutes=5)).otherwise("session_end"),
        n_events_total=pl.col("n_events_total") + pl.col("label").cast(pl.Int32),
    )

    assert session_features(leaky, rates, out_of_fold=False).equals(session_features(frame, rates, out_of_fold=False))
