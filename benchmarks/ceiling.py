"""The best a model can do with the training days it has: the quality benchmark's data-limited ceiling.

The truth (the generator's p_buy) knows every item's propensity exactly; a model must estimate
them from the sessions it trains on, and an item seen in a handful of sessions cannot be
measured. The ceiling knows everything the truth knows except those propensities: the world's
buying rule, its weights and the prior the catalogue draws propensities from (each category's
mean, the world's item_sd). It estimates the propensities by maximum a posteriori on the labelled
sessions that start before the test days, through the rule's PropensityUse, and scores every
session with the rule. No model trained on the same days can expect to rank the test days better;
the truth's AUC minus the ceiling's is the part of the gap that data, not modelling, leaves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import polars as pl
    import torch

    from clickstream.pipeline.synthetic.sessions import Catalogue, Clicks, World

LBFGS_ITERATIONS = 500


@dataclass(frozen=True)
class RuleInputs:
    """A world's sessions, flat, as the ceiling fits them: the rule's logit is `fixed` plus its
    propensity terms (pipeline.synthetic.sessions.PropensityUse) over `item`, `click_weight`."""

    fixed: np.ndarray  # float64 [n_sessions]: the rule's logit with every propensity 0
    session: np.ndarray  # int64 [n_clicks]
    item: np.ndarray  # int64 [n_clicks], catalogue index
    click_weight: np.ndarray  # float64 [n_clicks]
    best_weight: float


def rule_inputs(clicks: Clicks, catalogue: Catalogue, world: World) -> RuleInputs:
    """The propensity-free part of `world`'s rule on `clicks`, and where it reads the propensities."""
    use = world.propensity_use(clicks)
    blind = dataclasses.replace(catalogue, propensity=np.zeros(catalogue.n_items))
    return RuleInputs(
        fixed=world.rule(clicks, blind),
        session=np.repeat(np.arange(len(clicks.lengths)), clicks.lengths),
        item=clicks.item,
        click_weight=use.click_weight,
        best_weight=use.best_weight,
    )


def rule_logits(inputs: RuleInputs, propensity: torch.Tensor) -> torch.Tensor:
    """The rule's logit per session (float64) for item propensities `propensity`: differentiable."""
    import torch

    session, item = torch.from_numpy(inputs.session), torch.from_numpy(inputs.item)
    fixed = torch.from_numpy(inputs.fixed)
    clicked = propensity[item]
    logits = fixed.index_add(0, session, torch.from_numpy(inputs.click_weight) * clicked)
    if inputs.best_weight:
        best = torch.zeros_like(fixed).scatter_reduce(0, session, clicked, "amax", include_self=False)
        logits = logits + inputs.best_weight * best
    return logits


def fit_propensities(
    inputs: RuleInputs, label: np.ndarray, fit: np.ndarray, catalogue: Catalogue, item_sd: float
) -> np.ndarray:
    """MAP item propensities (float64 [n_items]) from the sessions where `fit` is set: the labels'
    log-likelihood under the rule plus a normal prior around each category's mean propensity."""
    import torch

    counts = np.maximum(np.bincount(catalogue.category), 1)
    category_mean = np.bincount(catalogue.category, weights=catalogue.propensity) / counts
    prior = torch.from_numpy(category_mean[catalogue.category])
    target = torch.from_numpy(label[fit].astype(np.float64))
    chosen = torch.from_numpy(fit)
    propensity = prior.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [propensity], max_iter=LBFGS_ITERATIONS, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        logits = rule_logits(inputs, propensity)[chosen]
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        value = value + ((propensity - prior) ** 2).sum() / (2 * item_sd**2)
        value.backward()
        return value

    optimiser.step(loss)
    return propensity.detach().numpy()


def ceiling_scores(
    world: str, *, sessions: int, days: int, start_date: dt.date, seed: int, test_from: dt.date
) -> pl.DataFrame:
    """session_id (String) and ceiling (Float64, a probability) for every session `generate_logs`
    writes with these arguments, the propensities fitted on those that start before `test_from`."""
    import polars as pl
    import torch

    from clickstream.pipeline.synthetic.generate import simulate_blocks, world_catalogue
    from clickstream.pipeline.synthetic.sessions import DAY_MS, WORLDS

    shop = WORLDS[world]
    catalogue = world_catalogue(shop, sessions=sessions, seed=seed)
    blocks = simulate_blocks(catalogue, shop, sessions=sessions, days=days, start_date=start_date, seed=seed)
    parts, ids, starts, labels, first = [], [], [], [], 0
    for block in blocks:
        part = rule_inputs(block.clicks, catalogue, shop)
        parts.append(dataclasses.replace(part, session=part.session + first))
        ids.append(block.ids)
        starts.append(block.starts)
        labels.append(block.label)
        first += len(block.ids)
    inputs = RuleInputs(
        fixed=np.concatenate([p.fixed for p in parts]),
        session=np.concatenate([p.session for p in parts]),
        item=np.concatenate([p.item for p in parts]),
        click_weight=np.concatenate([p.click_weight for p in parts]),
        best_weight=parts[0].best_weight,
    )
    test_ms = (test_from - dt.date(1970, 1, 1)).days * DAY_MS
    fit = np.concatenate(starts) < test_ms
    propensity = fit_propensities(inputs, np.concatenate(labels), fit, catalogue, shop.item_sd)
    with torch.no_grad():
        ceiling = torch.sigmoid(rule_logits(inputs, torch.from_numpy(propensity))).numpy()
    return pl.DataFrame(
        {"session_id": pl.Series(np.concatenate(ids)).cast(pl.String), "ceiling": pl.Series(ceiling, dtype=pl.Float64)}
    )
