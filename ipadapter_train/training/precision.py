"""Where training runs and in which precision: resolve "auto" and build the run's accelerator."""
from __future__ import annotations

import logging
import os

import torch

from ..errors import IPAdapterError

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    """CUDA if present, else Apple MPS, else CPU; `accelerate launch --cpu` forces the CPU."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 pays."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: be conservative
        return False


def resolve_precision(requested: str, device: torch.device, weights_dtype: torch.dtype | None = None) -> str:
    """Turn "auto" into "bf16", "fp16" or "no" for this device; refuse what the device cannot do well.

    `weights_dtype` is the dtype of frozen weights the caller cannot change (ComfyUI's MODEL); None when the
    weights will be loaded in the dtype this returns.
    """
    kind = torch.device(device).type
    if requested == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if kind == "cpu" and cpu_has_bf16() and weights_dtype in (None, torch.bfloat16):
            # bf16 pays on the CPU only with bf16 weights: autocast over fp32 weights casts every weight on
            # every call and is no faster than fp32 (the 7.5-8 s against our fp32 8.0 s at 512 px).
            # Measured on a 2-core AVX512-BF16 EPYC: full-size SD1.5 at 512 px 4.3 s a step against 8.0 s
            # in fp32 and about half the memory; the tiny demo model at 128 px 0.20 s against 0.28 s, with
            # no warm-up beyond the first step (BENCHMARKS.md).
            return "bf16"
        return "no"  # CPUs without native bf16, and MPS: fp32; ask for fp16/bf16 explicitly
    if requested == "fp16" and kind == "cpu":
        raise IPAdapterError("fp16 training needs a GPU: on the CPU use --precision bf16 or --precision no.")
    if requested == "bf16" and kind == "cpu" and not cpu_has_bf16():
        # Allowed, because it halves the frozen models' memory: full-size SDXL in fp32 does not fit a 24 GB
        # machine (BENCHMARKS.md, SDXL), in bf16 it does. `auto` still picks fp32 on such a CPU.
        log.warning("This CPU has no native bf16 arithmetic (AVX512-BF16 or AMX): bf16 runs slower than fp32 here, "
                    "but holds the frozen models in half the memory (%s).", MEMORY_NOTE)
    return requested


# What the frozen weights take, from the models' parameter counts (UNet + VAE + text encoders; image encoder
# ViT-H 0.63 G): 2 bytes a parameter in bf16, 4 in fp32. A training step needs more (BENCHMARKS.md: peak RSS of
# full-size SD1.5 4.7 GB in bf16, 8.2 GB in fp32; SDXL in bf16 13.4-16.2 GiB).
MEMORY_NOTE = ("weights alone: SD1.5 (1.07 G parameters) about 2.1 GB in bf16, 4.3 GB in fp32; SDXL (3.47 G) "
               "about 6.9 GB in bf16, 13.9 GB in fp32")


def weights_memory_note(parameters: int) -> str:
    """What `parameters` frozen weights take in each precision, as one phrase for a log line."""
    return (f"{parameters / 1e9:.2f} G parameters: about {parameters * 2 / 1e9:.1f} GB in bf16, "
            f"{parameters * 4 / 1e9:.1f} GB in fp32")


def frozen_dtype(precision: str) -> torch.dtype:
    """The frozen UNet/VAE/text encoder need no fp32 copy when training in bf16 or fp16."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def inference_dtype(requested: str, device: torch.device | str) -> torch.dtype:
    """Weights dtype for generation: "auto" is fp16/bf16 on CUDA and fp32 elsewhere (sampling quality in
    bf16 on the CPU has not been checked with real weights); an explicit choice is checked as for training."""
    if requested == "auto" and torch.device(device).type != "cuda":
        return torch.float32
    return frozen_dtype(resolve_precision(requested, torch.device(device)))


# The variables a launcher (accelerate launch, torchrun, MPI) sets for the number of processes.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes() -> int:
    """How many processes the launcher started this run with (1 when started as a plain process)."""
    for name in WORLD_SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


# ... and for this process's place among them (0 = the main process).
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def launched_rank() -> int:
    """This process's rank in the launcher's group (0 when started as a plain process)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def make_accelerator(config, device: torch.device | str | None = None, weights_dtype: torch.dtype | None = None):
    """What the trainer runs through: accelerate's `Accelerator` (joining the process group) under a launcher
    with several processes, else a `LocalAccelerator`, which leaves accelerate's process-wide state alone
    (a ComfyUI server or a test session runs many trainings in one process)."""
    device = torch.device(device) if device is not None else default_device()
    precision = resolve_precision(config.mixed_precision, device, weights_dtype)
    if launched_processes() <= 1:
        from .local_accelerator import LocalAccelerator

        accelerator = LocalAccelerator(precision, device)
    else:
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    log.info("Training on %s with precision %s (%d process(es)).", accelerator.device, precision,
             accelerator.num_processes)
    return accelerator
