"""Shard units: every unit goes to exactly one rank, the ranks' rows are as even as whole units
allow, and each rank reads exactly its own sessions (together: every labelled session once)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from fixtures import labelled_lake
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream.models.training.shards import assign, gather_sessions, read_units, shard_units
from clickstream.models.training.window import prepare
from clickstream.pipeline.core.lake import Lake


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(0, 10_000), max_size=40), world=st.integers(1, 5))
def test_property_each_unit_goes_to_exactly_one_rank_and_no_rank_carries_more_than_the_largest_unit_extra(
    weights: list[int], world: int
) -> None:
    shares = assign(weights, world)
    assert len(shares) == world
    assert sorted(i for share in shares for i in share) == list(range(len(weights)))
    loads = [sum(weights[i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= max(weights, default=0)  # greedy: never a whole unit apart
    assert shares == assign(weights, world)  # the same on every machine


def test_given_uneven_units_then_one_two_and_three_ranks_read_disjoint_sessions_that_make_the_whole(
    tmp_path: Path,
) -> None:
    settings = labelled_lake(tmp_path, sessions=3000, days=5)
    window = prepare(settings, settings.train, None, None)
    lake = Lake(settings.lake)
    every = set()
    for part in (window.train, window.val):
        every |= set(pl.concat(read_units(lake, part.units))["session_id"].to_list())
    labelled = pl.read_delta(lake.table_uri("sequences")).filter(pl.col("label").is_not_null())
    assert every == set(labelled["session_id"].to_list())  # the window is every labelled session
    surveys = [*window.train.surveys, *window.val.surveys]
    assert len({s.sessions for s in surveys}) > 1  # the units differ in size
    for world in (1, 2, 3):
        seen: list[str] = []
        for share in assign([s.sessions for s in surveys], world):
            seen += [sid for i in share for sid in next(read_units(lake, [surveys[i].unit]))["session_id"].to_list()]
        assert len(seen) == len(set(seen)) == len(every)  # disjoint and complete


def test_given_the_lake_writes_sequences_then_a_unit_is_one_row_group_and_buffers_join_whole_units(
    tmp_path: Path,
) -> None:
    settings = labelled_lake(tmp_path, sessions=2000, days=2)
    lake = Lake(settings.lake)
    units = shard_units(lake, lake.files("sequences"))
    assert units and all(u.offset == 0 for u in units)  # small days: one row group a file
    frames = [pl.DataFrame({"x": range(n)}) for n in (3, 4, 5, 1)]
    assert [f.height for f in gather_sessions(frames, 6)] == [7, 6]
    assert [f.height for f in gather_sessions(frames, 100)] == [13]
