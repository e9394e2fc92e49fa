"""The quality benchmark's data-limited ceiling: each world's rule read through its declared
propensity use, and propensities estimated from labelled sessions."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
import torch

from benchmarks.ceiling import ceiling_scores, fit_propensities, rule_inputs, rule_logits
from clickstream.models.evaluation import auc
from clickstream.pipeline.synthetic.generate import simulate_blocks, world_catalogue
from clickstream.pipeline.synthetic.sessions import WORLDS

START = dt.date(2014, 4, 1)


def _simulated(world: str, sessions: int, seed: int = 3):
    shop = WORLDS[world]
    catalogue = world_catalogue(shop, sessions=sessions, seed=seed)
    (block,) = simulate_blocks(catalogue, shop, sessions=sessions, days=2, start_date=START, seed=seed)
    return shop, catalogue, block


@pytest.mark.parametrize("world", list(WORLDS))
def test_given_each_world_then_its_rule_is_the_propensity_free_part_plus_its_declared_propensity_use(world: str):
    shop, catalogue, block = _simulated(world, 3_000)
    inputs = rule_inputs(block.clicks, catalogue, shop)

    rebuilt = rule_logits(inputs, torch.from_numpy(catalogue.propensity)).numpy()

    np.testing.assert_allclose(rebuilt, shop.rule(block.clicks, catalogue), rtol=0, atol=1e-9)
    moved = dataclasses.replace(catalogue, propensity=catalogue.propensity + np.linspace(-1, 1, catalogue.n_items))
    rebuilt = rule_logits(inputs, torch.from_numpy(moved.propensity)).numpy()
    np.testing.assert_allclose(rebuilt, shop.rule(block.clicks, moved), rtol=0, atol=1e-9)


def test_given_no_labelled_sessions_then_the_estimate_is_each_categorys_mean_propensity():
    shop, catalogue, block = _simulated("appeal", 2_000)
    inputs = rule_inputs(block.clicks, catalogue, shop)

    estimate = fit_propensities(inputs, block.label, np.zeros(len(block.ids), bool), catalogue, shop.item_sd)

    means = {c: catalogue.propensity[catalogue.category == c].mean() for c in np.unique(catalogue.category)}
    np.testing.assert_allclose(estimate, [means[c] for c in catalogue.category], rtol=0, atol=1e-9)


def test_given_labelled_sessions_then_clicked_items_are_estimated_closer_than_their_categorys_mean():
    shop, catalogue, block = _simulated("appeal", 60_000)
    inputs = rule_inputs(block.clicks, catalogue, shop)
    prior = fit_propensities(inputs, block.label, np.zeros(len(block.ids), bool), catalogue, shop.item_sd)

    estimate = fit_propensities(inputs, block.label, np.ones(len(block.ids), bool), catalogue, shop.item_sd)

    clicked = catalogue.propensity[block.clicks.item]
    error, prior_error = estimate[block.clicks.item] - clicked, prior[block.clicks.item] - clicked
    assert np.sqrt(np.mean(error**2)) < 0.8 * np.sqrt(np.mean(prior_error**2))


def test_given_a_world_then_the_ceiling_ranks_the_test_day_between_the_category_means_and_the_truth():
    shop, catalogue, block = _simulated("appeal", 40_000)
    test = block.starts >= (START + dt.timedelta(days=1) - dt.date(1970, 1, 1)).days * 86_400_000
    inputs = rule_inputs(block.clicks, catalogue, shop)
    prior = fit_propensities(inputs, block.label, np.zeros(len(block.ids), bool), catalogue, shop.item_sd)
    blind = rule_logits(inputs, torch.from_numpy(prior)).numpy()

    scores = ceiling_scores(
        "appeal", sessions=40_000, days=2, start_date=START, seed=3, test_from=START + dt.timedelta(days=1)
    )

    assert scores["session_id"].to_list() == block.ids.astype(str).tolist()
    ceiling = scores["ceiling"].to_numpy()
    labels = block.label[test]
    assert auc(labels, blind[test]) + 0.02 < auc(labels, ceiling[test]) < auc(labels, block.p_buy[test])
