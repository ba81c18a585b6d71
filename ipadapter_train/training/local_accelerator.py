"""A one-process stand-in for accelerate's `Accelerator`, with the methods the trainer calls.

accelerate keeps its `AcceleratorState` / `PartialState` as process-wide singletons. A run inside a
long-lived process (a ComfyUI server, a test session) that built an `Accelerator` would leave that state
behind, and the next run with another precision would have to reset a global that other code in the
process may rely on. A single process needs none of it: no process group, nothing to gather. So a run
with one process uses this object instead, and only `accelerate launch` runs build a real `Accelerator`
(`training.precision.make_accelerator`).

Mixed precision behaves as accelerate's does for one process: `autocast()` is `torch.autocast` in bf16
or fp16 on the run's device, `prepare` runs the model's forward under it and returns fp32 outputs,
and fp16 scales the loss with a `GradScaler` whose step skips steps with overflowing gradients.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _to_fp32(value: Any) -> Any:
    """Half-precision tensors (also inside tuples, lists and dicts) as fp32; everything else as is."""
    if torch.is_tensor(value):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    return value


class _ScaledOptimizer:
    """An optimizer whose `step` goes through a `GradScaler` (fp16): unscale, skip on inf/NaN, update."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: Any) -> None:
        self.optimizer, self.scaler = optimizer, scaler

    def step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups


class LocalAccelerator:
    """What the trainer uses of `accelerate.Accelerator`, for one process, without global state."""

    process_index = 0
    num_processes = 1
    is_main_process = True

    def __init__(self, mixed_precision: str, device: torch.device | str) -> None:
        self.mixed_precision = mixed_precision
        self.device = torch.device(device)
        self._dtype = AUTOCAST_DTYPES.get(mixed_precision)
        # accelerate scales fp16 losses on every device it allows fp16 on (never the CPU)
        self.scaler = torch.amp.GradScaler(self.device.type) if mixed_precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """torch.autocast in the run's half precision on its device; nothing in fp32."""
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._dtype)

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """Place the model on the device and run its forward under autocast with fp32 outputs."""
        model.to(self.device)
        if self._dtype is not None:
            forward = model.forward

            @functools.wraps(forward)
            def forward_in_precision(*args: Any, **kwargs: Any) -> Any:
                with self.autocast():
                    out = forward(*args, **kwargs)
                return _to_fp32(out)

            model.forward = forward_in_precision
        if self.scaler is not None:
            optimizer = _ScaledOptimizer(optimizer, self.scaler)
        return model, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled first in fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """One process: the tensor itself."""
        return tensor

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        """One process: the tensor itself (a sum or a mean over one process)."""
        return tensor

    def wait_for_everyone(self) -> None:
        """One process: nobody to wait for."""

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        """The model itself (its forward keeps the precision wrapper, as accelerate's default does)."""
        return model
