"""SlotAdamW against torch's AdamW and Adam: live slots step as torch does, the others do not move at all."""

from __future__ import annotations

import pytest
import torch

from bench.slot_optim import SlotAdamW, Slots

L, B, N, K, R = 3, 2, 5, 4, 2


def _slot(t: torch.Tensor, layer: int, k: int) -> torch.Tensor:
    return t[layer, ..., k * R : (k + 1) * R]


@pytest.mark.parametrize("coupled", [False, True])
def test_live_slots_match_torch_and_masked_slots_stay_bit_identical(coupled: bool) -> None:
    g = torch.Generator().manual_seed(0)
    start = torch.randn(L, B, N, K * R, generator=g, dtype=torch.float64)
    stacked = torch.nn.Parameter(start.clone())
    head = torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
    live = torch.zeros(L, K, dtype=torch.bool)
    decay = 0.05
    groups = [{"params": [stacked], "weight_decay": 0.0 if coupled else decay}, {"params": [head], "weight_decay": 0.0}]
    ours = SlotAdamW(groups, {stacked: Slots(live, R)}, lr=0.1, betas=(0.8, 0.9), coupled=decay if coupled else None)
    # the reference: one tensor per slot, stepped only when live (its gradient None otherwise)
    refs = [[torch.nn.Parameter(_slot(start, i, k).clone()) for k in range(K)] for i in range(L)]
    ref_head = torch.nn.Parameter(head.detach().clone())
    kind = torch.optim.Adam if coupled else torch.optim.AdamW
    reference = kind([p for row in refs for p in row], lr=0.1, betas=(0.8, 0.9), weight_decay=decay)
    reference_head = kind([ref_head], lr=0.1, betas=(0.8, 0.9), weight_decay=decay if coupled else 0.0)  # L2: all
    counts = torch.zeros(L, K)
    for step in range(20):
        live.copy_(torch.rand(L, K, generator=g) < 0.5)
        if step == 0:
            live[0, 0] = False  # never live until the last steps: starts late with its own count
        if step >= 17:
            live[0, 0] = True
        grad = torch.randn(L, B, N, K * R, generator=g, dtype=torch.float64)
        head_grad = torch.randn(3, generator=g, dtype=torch.float64)
        before = stacked.detach().clone()
        moments = {k: v.clone() for k, v in ours.state[stacked].items()} if ours.state else None
        stacked.grad, head.grad, ref_head.grad = grad.clone(), head_grad.clone(), head_grad.clone()
        for i in range(L):
            for k in range(K):
                refs[i][k].grad = _slot(grad, i, k).clone() if live[i, k] else None
        ours.step()
        reference.step()
        reference_head.step()
        counts += live
        for i in range(L):
            for k in range(K):
                if live[i, k]:
                    torch.testing.assert_close(_slot(stacked.detach(), i, k), refs[i][k].detach())
                else:
                    assert torch.equal(_slot(stacked.detach(), i, k), _slot(before, i, k))
                    if moments is not None:
                        for key in ("exp_avg", "exp_avg_sq"):
                            assert torch.equal(_slot(ours.state[stacked][key], i, k), _slot(moments[key], i, k))
        torch.testing.assert_close(head.detach(), ref_head.detach(), msg=f"step {step}")
        assert torch.equal(ours.state[stacked]["steps"], counts)


def test_state_round_trips_through_a_state_dict() -> None:
    p = torch.nn.Parameter(torch.randn(2, 3, 4))
    live = torch.tensor([[True, False], [False, True]])
    first = SlotAdamW([p], {p: Slots(live, 2)}, lr=0.1)
    p.grad = torch.randn_like(p)
    first.step()
    second = SlotAdamW([p], {p: Slots(live, 2)}, lr=0.1)
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.state[p]["steps"], live.float())
    assert torch.equal(second.state[p]["exp_avg"], first.state[p]["exp_avg"])
