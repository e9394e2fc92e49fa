"""Event ids as integer codes: every code names its id, and first sightings are exact whatever the
blocks the sessions are worked through in."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from clickstream.features import event_ids
from clickstream.features.event_ids import EventIds

sessions_of_ids = st.lists(st.lists(st.sampled_from(["a", "b", "c", "12345678", None]), max_size=8), max_size=30)


def _first_sightings(sessions: list[list[str | None]]) -> list[bool]:
    """Plain Python: whether each event's id (None included) is new to its session."""
    return [value not in session[:n] for session in sessions for n, value in enumerate(session)]


@hypothesis_settings(max_examples=60, deadline=None)
@given(sessions=sessions_of_ids, block_events=st.integers(1, 10))
def test_property_codes_name_the_ids_and_first_sightings_match_a_plain_python_scan(sessions, block_events):
    flat = pl.Series([value for session in sessions for value in session], dtype=pl.String)
    lengths = np.array([len(session) for session in sessions], dtype=np.int64)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(event_ids, "BLOCK_EVENTS", block_events)
        ids = EventIds.of(flat, lengths)
        first = ids.first_sighting

    assert ids.ids.gather(ids.code).to_list() == flat.to_list()  # a missing id has the null code
    assert ids.ids[ids.missing] is None
    assert first.tolist() == _first_sightings(sessions)


def test_codes_of_ids_no_longer_held_by_any_categorical_still_name_them():
    """Polars forgets category numbers nobody holds: the codes must be named before that."""
    ids = EventIds.of(pl.Series(["never-seen-before-x", "never-seen-before-y"]), np.array([2]))

    assert ids.ids.gather(ids.code).to_list() == ["never-seen-before-x", "never-seen-before-y"]


def test_first_sightings_of_many_blocks_of_long_and_short_sessions():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(0, 6, 30_000), [500, 0, 70_000], rng.integers(0, 6, 30_000)])
    values = rng.integers(0, 40, lengths.sum()).astype(str)
    sessions = np.split(values, np.cumsum(lengths)[:-1])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(event_ids, "BLOCK_EVENTS", 10_000)  # many blocks, and a session longer than one
        first = EventIds.of(pl.Series(values), lengths).first_sighting

    assert first.tolist() == _first_sightings([session.tolist() for session in sessions])
