"""Windows and macOS: the core imports and trains without POSIX-only modules, peak memory is read in the
right unit on each platform, `mps` is chosen on a Mac, and file replacement works the Windows way.

Windows and macOS cannot exist here: the POSIX-only modules are made unimportable in a subprocess, and
platform facts (sys.platform, psutil, the MPS backend, a locked file) are mocked where the code reads them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, train_args
from ipadapter_train.training import allocator
from ipadapter_train.training import memory
from ipadapter_train.training import precision
from ipadapter_train.storage import weights_io
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.training.report import peak_memory

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent
WINDOWS_FORBIDDEN = set('<>:"|?*')

# Runs in a fresh interpreter: block the POSIX-only modules for the core (see posix_blocker), import every
# module of the core, then train through the CLI in this same process (argv[1]: the CLI's arguments as JSON).
_SCRIPT = r"""
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[2])
import posix_blocker
posix_blocker.install(only_for=("ipadapter_train",))
if not posix_blocker.blocked_for("ipadapter_train.probe") or posix_blocker.blocked_for("psutil.probe"):
    raise SystemExit("the block does not work")
import ipadapter_train
names = [m.name for m in pkgutil.walk_packages(ipadapter_train.__path__, "ipadapter_train.")
         if not m.name.endswith("__main__")]  # __main__ runs the CLI when imported
for name in names:
    importlib.import_module(name)
from ipadapter_train.cli.main import main
print("RESULT " + json.dumps({"rc": main(json.loads(sys.argv[1])), "modules": names}))
"""


@pytest.mark.cli
def test_core_imports_and_trains_without_posix_modules(models, tmp_path):
    out, run_dir = tmp_path / "a.safetensors", tmp_path / "run"
    args = train_args(models, out, "--max-steps", "2", "--checkpoint-every", "1", "--run-dir", str(run_dir))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args), str(TESTS)], capture_output=True,
                       text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["rc"] == 0, r.stderr[-3000:]
    assert {"ipadapter_train.training.report", "ipadapter_train.training.trainer", "ipadapter_train.training.allocator",
            "ipadapter_train.training.memory"} <= set(result["modules"])
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert report["steps"] == 2 and out.is_file()
    peak = report["peak_memory"]["peak_rss_bytes"]
    assert isinstance(peak, int) and peak > 50 * 2**20  # a process with torch loaded: tens of MiB at least
    # every name the run wrote (adapter, report, checkpoints) is a valid Windows file name
    for path in [out, *run_dir.rglob("*")]:
        assert not WINDOWS_FORBIDDEN & set(path.name) and not path.name.endswith((".", " ")), path


# ------------------------------------------------------------------ peak memory on each platform

class _Usage:
    def getrusage(self, who):
        return SimpleNamespace(ru_maxrss=123456)

    RUSAGE_SELF = 0


def _platform(monkeypatch, name: str) -> None:
    monkeypatch.setattr(memory, "sys", SimpleNamespace(platform=name))


def test_peak_memory_macos_reports_bytes(monkeypatch):
    _platform(monkeypatch, "darwin")
    monkeypatch.setitem(sys.modules, "resource", _Usage())
    assert peak_memory(torch.device("cpu")) == {"peak_rss_bytes": 123456}


def test_peak_memory_linux_reports_kib(monkeypatch):
    _platform(monkeypatch, "linux")
    monkeypatch.setitem(sys.modules, "resource", _Usage())
    assert peak_memory(torch.device("cpu")) == {"peak_rss_bytes": 123456 * 1024}


def test_peak_memory_linux_real_value_is_plausible():
    peak = memory.peak_rss_bytes()
    assert peak is not None and 50 * 2**20 < peak < 64 * 2**30


def _fake_psutil(peak_wset):
    info = SimpleNamespace(rss=1) if peak_wset is None else SimpleNamespace(rss=1, peak_wset=peak_wset)
    return SimpleNamespace(Process=lambda: SimpleNamespace(memory_info=lambda: info))


def test_peak_memory_windows_reads_psutil_peak_working_set(monkeypatch):
    _platform(monkeypatch, "win32")
    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` raises, as on Windows
    monkeypatch.setitem(sys.modules, "psutil", _fake_psutil(987654321))
    assert peak_memory(torch.device("cpu")) == {"peak_rss_bytes": 987654321}


def test_peak_memory_windows_without_psutil_is_unknown_not_an_error(monkeypatch):
    _platform(monkeypatch, "win32")
    monkeypatch.setitem(sys.modules, "resource", None)
    monkeypatch.setitem(sys.modules, "psutil", None)
    assert peak_memory(torch.device("cpu")) == {"peak_rss_bytes": None}


def test_glibc_allocator_tuning_is_skipped_off_linux(monkeypatch):
    for name in ("win32", "darwin"):
        monkeypatch.setattr(allocator, "sys", SimpleNamespace(platform=name))
        assert allocator.keep_freed_memory() is False


# ------------------------------------------------------------------ device choice on a Mac

def test_default_device_is_mps_on_a_mac(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert precision.default_device() == torch.device("mps")
    # auto precision on MPS is fp32; an explicit fp16 is allowed there (it is a GPU)
    assert precision.resolve_precision("auto", torch.device("mps")) == "no"
    assert precision.resolve_precision("fp16", torch.device("mps")) == "fp16"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # `accelerate launch --cpu` still wins
    assert precision.default_device() == torch.device("cpu")


def test_default_device_prefers_cuda_then_cpu(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert precision.default_device() == torch.device("cpu")


# ------------------------------------------------------------------ replacing files the Windows way

def _windows_replace(monkeypatch, fails: int):
    """os.replace as on Windows while another program holds the target open for `fails` attempts."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) <= fails:
            raise PermissionError(13, "The process cannot access the file because it is being used")
        real(src, dst)

    monkeypatch.setattr(weights_io, "sys", SimpleNamespace(platform="win32"))
    monkeypatch.setattr(weights_io, "time", SimpleNamespace(sleep=lambda s: None))
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_atomic_write_retries_a_briefly_locked_file_on_windows(tmp_path, monkeypatch):
    target = tmp_path / "adapter.safetensors"
    target.write_bytes(b"old")
    calls = _windows_replace(monkeypatch, fails=2)
    weights_io.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and len(calls) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]


def test_atomic_write_over_a_file_in_use_is_a_clear_error(tmp_path, monkeypatch):
    target = tmp_path / "adapter.safetensors"
    target.write_bytes(b"old")
    _windows_replace(monkeypatch, fails=1000)
    with pytest.raises(IPAdapterError, match=r"Cannot replace .*adapter\.safetensors: another program has it open"):
        weights_io.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"  # nothing lost, no temp file left
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]


def test_permission_error_off_windows_is_not_retried(tmp_path, monkeypatch):
    calls = _windows_replace(monkeypatch, fails=1000)
    monkeypatch.setattr(weights_io, "sys", SimpleNamespace(platform="linux"))
    with pytest.raises(PermissionError):
        weights_io.atomic_write_bytes(tmp_path / "x.bin", b"new")
    assert len(calls) == 1


def test_folder_swap_that_fails_puts_the_old_folder_back(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "state.json").write_text("old", encoding="utf-8")
    real = os.replace

    def replace(src, dst):
        if Path(dst) == folder and Path(src).name.endswith(".tmp"):  # the new folder cannot move in
            raise PermissionError(13, "Access is denied")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PermissionError):
        weights_io.atomic_write_dir(folder, lambda tmp: (tmp / "state.json").write_text("new", encoding="utf-8"))
    assert (folder / "state.json").read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
