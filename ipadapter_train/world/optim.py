"""The optimiser every world stage uses: AdamW with a short warm-up and a cosine decay."""
from __future__ import annotations

import math
from typing import Iterable

import torch

from .recipe import Stage


def optimiser(params: Iterable[torch.nn.Parameter],
              stage: Stage) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW at the stage's rate, warmed up over 5% of its steps and decayed to 10% by a cosine."""
    opt = torch.optim.AdamW(list(params), lr=stage.lr, weight_decay=0.01)
    warm = max(1, stage.steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        done = (step - warm) / max(1, stage.steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def descend(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR,
            clip: tuple[Iterable[torch.nn.Parameter], float] | None = None) -> float:
    """One step down `loss` (gradients clipped to `clip`'s norm first when given); returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip[0], clip[1])
    opt.step()
    sched.step()
    return loss.item()
