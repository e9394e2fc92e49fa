from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from clickstream.features import event_ids, tensor_loader
from clickstream.features.sequences import sessions_of
from clickstream.features.tensor_loader import TENSOR_COLUMNS, load_tensors
from clickstream.features.tensors import CONTINUOUS_FEATURES, STORED_FEATURES, SequenceTensors, session_positions
from clickstream.features.vocabulary import OOV, build_vocabulary
from clickstream.pipeline.core.config import SequenceConfig
from clickstream.pipeline.core.schemas import EVENTS

DAY = dt.date(2014, 4, 1)
T0 = dt.datetime(2014, 4, 1, tzinfo=dt.UTC)


def _sequences(rows: list[tuple[str, int, str, str, str]], config: SequenceConfig | None = None) -> pl.DataFrame:
    """SEQUENCES rows built by the sequences stage from (session, seconds, event_type, item, category) events."""
    events = pl.DataFrame(
        {
            "session_id": [r[0] for r in rows],
            "cookie_id": None,
            "ts": [T0 + dt.timedelta(seconds=r[1]) for r in rows],
            "event_type": [r[2] for r in rows],
            "item_id": [r[3] for r in rows],
            "category": [r[4] for r in rows],
            "price": None,
            "quantity": None,
            "source": "yoochoose",
            "labelled": [r[0] != "unlabelled" for r in rows],
        }
    ).cast(EVENTS)
    return sessions_of(events, DAY, DAY, config or SequenceConfig())[0]


event_rows = st.lists(
    st.tuples(
        st.sampled_from(["1", "2", "3", "unlabelled"]),
        st.integers(0, 20 * 3600),
        st.sampled_from(["view", "view", "purchase", "add_to_cart"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(["0", "S", "3", "12345678"]),
    ),
    min_size=1,
    max_size=40,
)


def _continuous(tensors: SequenceTensors) -> torch.Tensor:
    return tensors.continuous(*session_positions(tensors.offsets, tensors.item.numel()))


@hypothesis_settings(max_examples=40, deadline=None)
@given(rows=event_rows)
def test_property_flat_tensors_and_offsets_match_the_list_columns_exactly(rows):
    frame = _sequences(rows)
    vocabulary = build_vocabulary(frame, SequenceConfig(item_min_count=1))

    tensors = load_tensors(frame, vocabulary)

    assert tensors.offsets.tolist() == [0, *np.cumsum(frame["n_events"].to_list()).tolist()]
    items = frame["item_id"].explode().cast(pl.String)
    assert tensors.item.tolist() == vocabulary.item_index(items).tolist()
    assert OOV not in tensors.item.tolist()  # every item is in a vocabulary built on these sessions
    assert tensors.category.tolist() == vocabulary.category_index(frame["category"].explode().cast(pl.String)).tolist()
    assert tensors.event_type.tolist() == [code + 1 for code in frame["event_type"].explode().to_list()]
    assert tensors.stored.shape == (len(STORED_FEATURES), len(items))
    continuous = _continuous(tensors)
    assert continuous.shape == (len(items), len(CONTINUOUS_FEATURES))
    column = {name: continuous[:, i].tolist() for i, name in enumerate(CONTINUOUS_FEATURES)}
    for name in ("log_gap_prev", "log_dwell"):
        assert column[name] == frame[name].explode().to_list()
    assert column["dwell_known"] == [float(k) for k in frame["dwell_known"].explode().to_list()]
    positions = [float(p) for n in frame["n_events"] for p in range(n)]
    assert column["log_position"] == torch.log1p(torch.tensor(positions)).tolist()
    from_end = [float(n - 1 - p) for n in frame["n_events"] for p in range(n)]
    assert column["log_position_from_end"] == torch.log1p(torch.tensor(from_end)).tolist()
    starts = frame.select("start_hour", "n_events").iter_rows()
    angle = [hour * 2 * math.pi / 24 for hour, n in starts for _ in range(n)]
    assert column["start_hour_sin"] == pytest.approx([math.sin(a) for a in angle], abs=1e-6)
    assert column["start_hour_cos"] == pytest.approx([math.cos(a) for a in angle], abs=1e-6)
    revisits, same_item, same_category, category_returns = [], [], [], []
    for session_items, session_categories in zip(frame["item_id"], frame["category"], strict=True):
        session_items, session_categories = session_items.to_list(), session_categories.to_list()
        revisits += [float(item in session_items[:n]) for n, item in enumerate(session_items)]
        same_item += [float(n > 0 and item == session_items[n - 1]) for n, item in enumerate(session_items)]
        same_category += [float(n > 0 and c == session_categories[n - 1]) for n, c in enumerate(session_categories)]
        category_returns += [
            float(c is not None and c in session_categories[:n]) for n, c in enumerate(session_categories)
        ]
    assert column["item_repeat"] == revisits
    assert column["same_item_as_previous"] == same_item
    assert column["same_category_as_previous"] == same_category
    assert column["category_repeat"] == category_returns
    labelled = frame.filter(pl.col("label").is_not_null())
    for key, name in (("item_id", "item_evidence"), ("category", "category_evidence")):
        holding = [sum(value in ids for ids in labelled[key].to_list()) for value in frame[key].explode().to_list()]
        assert column[name] == pytest.approx(np.log1p(holding).tolist(), rel=1e-6), name
    labels = [math.nan if label is None else float(label) for label in frame["label"]]
    assert np.array_equal(tensors.label.numpy(), np.array(labels, dtype=np.float32), equal_nan=True)


@hypothesis_settings(max_examples=20, deadline=None)
@given(rows=event_rows, block_events=st.integers(1, 8), out_of_fold=st.booleans())
def test_property_loading_block_by_block_gives_the_same_tensors_whatever_the_block_size(
    rows, block_events, out_of_fold
):
    frame = _sequences(rows)
    vocabulary = build_vocabulary(frame, SequenceConfig(item_min_count=1))
    whole = load_tensors(frame, vocabulary, out_of_fold=out_of_fold)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(event_ids, "BLOCK_EVENTS", block_events)
        blocks = load_tensors(frame, vocabulary, out_of_fold=out_of_fold)

    for name in ("offsets", "item", "category", "event_type", "stored", "flags", "start_hour", "label"):
        assert torch.equal(getattr(blocks, name).nan_to_num(), getattr(whole, name).nan_to_num()), name


def test_loading_reads_only_the_tensor_columns():
    frame = _sequences([("1", 0, "view", "a", "0"), ("1", 60, "view", "b", "0"), ("2", 30, "view", "c", "S")])
    vocabulary = build_vocabulary(frame, SequenceConfig(item_min_count=1))

    narrow = load_tensors(frame.select(TENSOR_COLUMNS), vocabulary, out_of_fold=True)

    assert torch.equal(narrow.stored, load_tensors(frame, vocabulary, out_of_fold=True).stored)


def test_sessions_come_in_the_frames_row_order_and_events_in_list_order():
    frame = _sequences([("1", 0, "view", "a", "0"), ("1", 60, "view", "b", "0"), ("2", 30, "view", "c", "S")])
    vocabulary = build_vocabulary(frame, SequenceConfig(item_min_count=1))

    forward, backward = load_tensors(frame, vocabulary), load_tensors(frame.reverse(), vocabulary)

    assert backward.select(torch.tensor([1, 0])).item.tolist() == forward.item.tolist()
    assert forward.lengths.tolist() == [2, 1]
    continuous = _continuous(forward)
    hour_sin = continuous[:, CONTINUOUS_FEATURES.index("start_hour_sin")]
    from_end = continuous[:, CONTINUOUS_FEATURES.index("log_position_from_end")]
    assert hour_sin.tolist() == [0.0, 0.0, 0.0]  # midnight
    assert from_end.tolist() == pytest.approx([math.log1p(1), 0.0, 0.0])


def test_an_empty_frame_loads_as_empty_tensors_with_every_continuous_column():
    frame = _sequences([("1", 0, "view", "a", "0")]).clear()

    tensors = load_tensors(frame, build_vocabulary(frame, SequenceConfig()), out_of_fold=True)

    assert tensors.n_sessions == 0 and tensors.offsets.tolist() == [0]
    assert tensors.stored.shape == (len(STORED_FEATURES), 0)
    assert _continuous(tensors).shape == (0, len(CONTINUOUS_FEATURES))


@hypothesis_settings(max_examples=30, deadline=None)
@given(rows=event_rows, data=st.data())
def test_property_inputs_derived_per_batch_do_not_depend_on_the_batch(rows, data):
    """A batch of sessions in any order gets, row for row, the inputs its events have in the whole
    set: nothing derived per batch (dwell, positions, start) leaks between neighbouring sessions.
    Truncated sessions keep the gap before their first kept event, so a first gap is not always 0."""
    frame = _sequences(rows, SequenceConfig(max_events=3))
    tensors = load_tensors(frame, build_vocabulary(frame, SequenceConfig(item_min_count=1)))
    assume(tensors.n_sessions > 0)  # a purchase alone leaves no input event, so no session
    sessions = torch.tensor(data.draw(st.permutations(range(tensors.n_sessions))), dtype=torch.int64)
    chosen = sessions[: data.draw(st.integers(1, tensors.n_sessions))]

    batch = tensors.select(chosen)
    _, events = tensors.event_rows(chosen)

    assert torch.equal(_continuous(batch), _continuous(tensors)[events])


def test_given_another_list_of_continuous_features_then_the_feature_schema_differs(monkeypatch):
    current = tensor_loader.feature_schema()

    monkeypatch.setattr(tensor_loader, "CONTINUOUS_FEATURES", CONTINUOUS_FEATURES[:-2])

    assert tensor_loader.feature_schema() != current  # so versions taking other inputs are never compared
