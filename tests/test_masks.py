"""MASM's selective layer masks on scripted losses and gradients."""

from __future__ import annotations

import torch

from bench.slot_optim import Slots
from methods.masks import GradStats, gradsnr_mask, random_mask, state_mask, state_ratios


def test_state_freezes_more_layers_for_the_subspace_that_runs_ahead() -> None:
    loss_ema = torch.tensor([0.2, 0.6, 0.7, 0.5])  # subspace 0 fits fastest, 3 slightly below the mean (0.5)
    drift = torch.arange(40, dtype=torch.float32).reshape(10, 4)  # drift grows with the layer index
    mask = state_mask(loss_ema, drift, rho_max=0.5, tau=0.5)
    frozen = (~mask).sum(0).tolist()
    assert frozen[0] == 5  # (0.5 - 0.2) / (0.5 * 0.5) > 1 -> clipped -> rho = rho_max -> 5 of 10 layers
    assert frozen[1] == frozen[2] == 0  # above the mean: never masked
    assert frozen[3] == 0  # exactly at the mean
    assert (~mask[:, 0]).nonzero().flatten().tolist() == [5, 6, 7, 8, 9]  # the layers that drifted most
    assert state_ratios(loss_ema, 0.5, 0.5)[0] > state_ratios(torch.tensor([0.4, 0.6, 0.7, 0.5]), 0.5, 0.5)[0]


def test_random_mask_matches_the_ratio_of_state() -> None:
    loss_ema = torch.tensor([0.1, 0.4, 0.6, 0.9])
    g = torch.Generator().manual_seed(0)
    expected = (~state_mask(loss_ema, torch.rand(20, 4), 0.6, 0.5)).sum(0)
    masks = [random_mask(loss_ema, 20, 0.6, 0.5, g) for _ in range(50)]
    assert all(torch.equal((~m).sum(0), expected) for m in masks)
    chosen = torch.stack([~m[:, 0] for m in masks]).float().mean(0)
    assert chosen.min() > 0  # every layer gets drawn sometime: random, not by drift


def test_gradsnr_keeps_layers_with_consistent_gradients() -> None:
    stats = GradStats(decay=0.9)
    slots = Slots(torch.ones(4, 1, dtype=torch.bool), 16)  # 4 layers, one subspace of 16 values each
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    for _ in range(100):
        rows = []
        for layer in range(4):
            consistent = layer in (1, 3)
            rows.append(direction + 0.1 * torch.randn(16, generator=g) if consistent else torch.randn(16, generator=g))
        stats.update([torch.stack(rows)], slots, slots.live)
    snr = stats.snr(slots)
    assert snr[1, 0] > 10 * snr[0, 0] and snr[3, 0] > 10 * snr[2, 0]
    assert gradsnr_mask(snr, keep=0.5)[:, 0].tolist() == [False, True, False, True]


def test_gradstats_skip_unseen_slots_and_round_trip() -> None:
    slots = Slots(torch.ones(2, 2, dtype=torch.bool), 3)
    stats = GradStats(0.5)
    seen = torch.tensor([[False, False], [True, False]])
    stats.update([torch.ones(2, 4, 6)], slots, seen)
    snr = stats.snr(slots)
    assert stats.sq is not None and stats.sq.tolist() == [[0.0, 0.0], [6.0, 0.0]]  # 0.5 * (4 rows x 3 columns)
    assert snr[0].tolist() == [0.0, 0.0] and snr[1, 1] == 0 and snr[1, 0] > 0
    copy = GradStats(0.5)
    copy.load_state_dict(stats.state_dict())
    assert torch.equal(copy.snr(slots), snr) and torch.equal(copy.mean[0], stats.mean[0])
