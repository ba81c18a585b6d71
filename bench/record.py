"""Recording a benchmark run: the JSON history, the machine line, and one table row in BENCHMARKS.md.

The table rows go between markers the benchmarks own:

    <!-- runs:train -->            (the table's header rows follow the start marker)
    | date | machine | ... |
    | --- | --- | ... |
    | 2026-11-28 | ... |          (one row per run, oldest first)
    <!-- /runs:train -->

A table that is missing is created at the end of the file. The hand-written text around the markers is
never touched, and the file is replaced in one step, so an interrupted benchmark leaves it whole.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def append_row(name: str, title: str, header: Sequence[str], row: Sequence[object], path: Path = BENCHMARKS) -> None:
    """Add `row` to the table `name` (created under the heading `title` if absent)."""
    start, end = f"<!-- runs:{name} -->", f"<!-- /runs:{name} -->"
    line = "| " + " | ".join(_cell(v) for v in row) + " |"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        body, tail = rest.split(end, 1)
        text = head + start + body.rstrip("\n") + "\n" + line + "\n" + end + tail
    else:
        table = "\n".join([start, "| " + " | ".join(header) + " |", "|" + " --- |" * len(header), line, end])
        text = text.rstrip("\n") + f"\n\n### {title}\n\n" + table + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def gib(num_bytes: float | None) -> str:
    """Bytes as GiB with one decimal, or an empty cell."""
    return "" if num_bytes is None else f"{num_bytes / 2**30:.1f} GiB"


def secs(value: float | None, digits: int = 2) -> str:
    """Seconds rounded for a table cell, or an empty cell."""
    return "" if value is None else f"{value:.{digits}f}"


def peak_cell(memory: dict) -> str:
    """A peak-memory table cell: CUDA max allocated on a GPU, else the process's peak RSS."""
    if "cuda_max_allocated_bytes" in memory:
        return gib(memory["cuda_max_allocated_bytes"]) + " VRAM"
    return gib(memory["peak_rss_bytes"]) + " RSS"


def machine(device: str) -> str:
    """Where a benchmark ran, in one line: CPU model and whether it has native bf16 (the CPU speed figures
    depend on it), cores, torch, threads, and the GPU when one is used."""
    import torch

    from ipadapter_train.training.precision import cpu_has_bf16
    from ipadapter_train.training.report import cpu_name

    bf16 = "no native bf16"
    if cpu_has_bf16():  # AMX tiles run bf16 several times faster than AVX512-BF16 alone: say which one it has
        bf16 = "AMX" if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else "AVX512-BF16, no AMX"
    text = f"{cpu_name()} ({bf16}), {os.cpu_count()} cores, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def append_history(path: Path, entry: dict) -> None:
    """Add one run's full record to a benchmark's JSON history file."""
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append(entry)
    path.write_text(json.dumps(history, indent=2))
