from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from clickstream.features.vocabulary import OOV, OOV_BRAND, Vocabulary, build_vocabulary, stable_hash
from clickstream.pipeline.core.config import SequenceConfig


def _sequences(items: list[list[str]], categories: list[list[str | None]] | None = None) -> pl.DataFrame:
    categories = categories or [["0"] * len(row) for row in items]
    lists = pl.List(pl.String)
    return pl.DataFrame(
        {
            "session_id": [str(n) for n in range(len(items))],
            "label": [n % 2 == 0 for n in range(len(items))],
            "item_id": items,
            "category": categories,
        },
        schema={"session_id": pl.String, "label": pl.Boolean, "item_id": lists, "category": lists},
    )


def test_items_below_min_count_map_to_oov_and_known_items_are_indexed_by_descending_count():
    vocabulary = build_vocabulary(_sequences([["a", "b", "b"], ["c", "b", "a"], ["rare"]]), SequenceConfig())

    assert vocabulary.items["id"].to_list() == ["b", "a"]
    assert vocabulary.item_index(pl.Series(["a", "b", "rare", "never", None])).tolist() == [3, 2, OOV, OOV, OOV]
    assert vocabulary.n_items == 4


def test_category_kinds_stay_apart_and_an_unseen_brand_has_its_own_oov():
    seen = _sequences([["x"] * 4], [["0", "12", "2093741234", "shoes"]])
    vocabulary = build_vocabulary(seen, SequenceConfig())

    index = vocabulary.category_index(pl.Series(["0", None, "1", "12", "S", "2093741234", "99999999", "hats", "shoes"]))

    unknown, one, twelve, special, brand, unseen_brand, unseen_other, other = (
        index[0], index[2], index[3], index[4], index[5], index[6], index[7], index[8],
    )  # fmt: skip
    assert index[1] == unknown  # missing is unknown
    assert twelve - one == 11 and special == twelve + 1
    assert len({unknown, one, special, brand, other}) == 5 and min(brand, other) > special
    assert (unseen_brand, unseen_other) == (OOV_BRAND, OOV)
    assert vocabulary.n_categories == max(index) + 1


def test_hash_buckets_give_unseen_items_a_stable_index_after_the_known_ones():
    config = SequenceConfig(item_min_count=1, item_hash_buckets=8)
    vocabulary = build_vocabulary(_sequences([["a", "b"]]), config)

    index = vocabulary.item_index(pl.Series(["new-1", "a", "new-1", "new-2"])).tolist()

    assert index[0] == index[2] and index[1] == 2
    assert all(4 <= i < 4 + 8 for i in (index[0], index[3]))
    assert vocabulary.n_items == 2 + 2 + 8


def test_stable_hash_is_64_bit_fnv1a_so_it_never_changes_between_versions():
    assert stable_hash(pl.Series(["a", "", "foobar"])).tolist() == [
        0xAF63DC4C8601EC8C,
        0xCBF29CE484222325,
        0x85944171F73967E8,
    ]


def test_a_saved_vocabulary_loads_back_identical_and_refuses_tampered_files(tmp_path):
    vocabulary = build_vocabulary(_sequences([["a", "a", "b", "b"]], [["S", "S", "12345678", "0"]]), SequenceConfig())

    files = vocabulary.save(tmp_path / "vocab")
    loaded = Vocabulary.load(tmp_path / "vocab")

    assert {f.name for f in files} == {
        "items.parquet",
        "categories.parquet",
        "item_id_buy_counts.parquet",
        "category_buy_counts.parquet",
        "item_id_end_buy_counts.parquet",
        "vocabulary.json",
    }
    assert loaded.version == vocabulary.version
    assert loaded.items.equals(vocabulary.items) and loaded.categories.equals(vocabulary.categories)
    pl.DataFrame({"id": ["b", "a"], "index": [2, 3]}).write_parquet(tmp_path / "vocab" / "items.parquet")
    with pytest.raises(ValueError, match="does not match"):
        Vocabulary.load(tmp_path / "vocab")


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    items=st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "12345678"]), min_size=1, max_size=5), min_size=1),
    seed=st.integers(0, 2**16),
)
def test_property_the_same_window_in_any_row_order_gives_the_same_vocabulary(items, seed):
    frame = _sequences(items, [[i[:3] for i in row] for row in items])
    config = SequenceConfig()

    first = build_vocabulary(frame, config)
    second = build_vocabulary(frame.sample(fraction=1.0, shuffle=True, seed=seed), config)

    assert first.version == second.version
    assert first.items.equals(second.items) and first.categories.equals(second.categories)
    counts = frame["item_id"].explode().value_counts()
    frequent = set(counts.filter(pl.col("count") >= 2)["item_id"])
    assert set(first.items["id"]) == frequent
