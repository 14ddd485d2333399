"""PatchCore's memory bank is a greedy k-center coreset: it must cover every kind of patch the
good images have, not just the common ones (a rare good texture left out reads as a defect)."""

from __future__ import annotations

import pytest
import torch

from adapt.methods.patchcore import greedy_coreset

pytestmark = pytest.mark.unit


def _clusters(sizes: list[int], dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[: len(sizes)] * 10.0
    points = torch.cat([c + 0.01 * torch.randn(n, dim, generator=g) for c, n in zip(centres, sizes)])
    owner = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    return points, owner


def test_the_coreset_keeps_one_patch_of_every_kind_even_a_rare_one():
    points, owner = _clusters([300, 200, 100, 3])  # the last kind: 3 of 603 patches
    chosen = greedy_coreset(points, 4, seed=1)
    assert sorted(owner[chosen].tolist()) == [0, 1, 2, 3]
    assert len(set(chosen.tolist())) == 4


def test_every_patch_is_close_to_the_coreset_unlike_a_random_sample():
    points = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0)) ** 3  # heavy tails
    chosen = greedy_coreset(points, 50, seed=0)

    def radius(rows: torch.Tensor) -> float:  # the farthest any patch is from its nearest bank entry
        return float(torch.cdist(points, points[rows]).min(dim=1).values.max())

    random = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:50]
    assert radius(chosen) < 0.7 * radius(random)
    assert torch.equal(chosen, greedy_coreset(points, 50, seed=0))  # seeded: the same bank every time


def test_a_bank_at_least_as_large_as_the_patches_keeps_them_all():
    points, _ = _clusters([5, 5])
    assert sorted(greedy_coreset(points, 10).tolist()) == list(range(10))
    assert sorted(greedy_coreset(points, 25).tolist()) == list(range(10))
