"""On a CUDA machine (`pytest -m gpu`): packed == padded, resume, scoring equal to CPU's and the
bf16 path, through the same checks `python -m clickstream.pipeline.orchestrate.gpu_checks` runs
where pytest is missing. Skipped without CUDA. The checks' code also runs on CPU here."""

from __future__ import annotations

import pytest
import torch

from clickstream.pipeline.orchestrate.gpu_checks import CHECKS


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_given_a_cuda_gpu_when_checked_then_the_guarantee_holds(name: str) -> None:
    CHECKS[name](torch.device("cuda"))


@pytest.mark.slow
def test_given_the_cpu_when_checked_then_every_guarantee_holds_exactly_or_within_tolerance() -> None:
    gaps = {name: check(torch.device("cpu")) for name, check in CHECKS.items()}
    assert gaps["resume"] == 0.0 and gaps["scoring_matches_cpu"] == 0.0  # the same kernels, deterministic
