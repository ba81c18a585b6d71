"""Start and drive a real ComfyUI server for the integration tests. The fixtures at the bottom are registered for
every test module by tests/conftest.py (so `comfy` is one server for the session); no conftest.py here: a second
one would replace the `conftest` module that test modules import helpers from.

The server is the unmodified ComfyUI 0.3.75 that `tests/comfyui/setup_comfyui.sh` puts in
`.comfyui/ComfyUI`; it runs headless on the CPU with this repository linked into `custom_nodes/`.
It is started and stopped by PID, so a failing test never leaves it running.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFY_DIR = ROOT / ".comfyui" / "ComfyUI"
PACK_NAME = "ipadapter-train"
log = logging.getLogger(__name__)
_started: list["ComfyServer"] = []  # every server this test process started (see `stop_all_servers`)


def require_comfyui() -> None:
    """Fail (not skip) when ComfyUI is missing: CI installs it, so a missing copy is a setup bug."""
    if not (COMFY_DIR / "main.py").is_file():
        pytest.fail(f"ComfyUI is not installed at {COMFY_DIR}: run tests/comfyui/setup_comfyui.sh first.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """One ComfyUI process with its own base directory, models and log file."""

    def __init__(self, base: Path, models: dict[str, list[Path]] | None = None, pack: Path = ROOT,
                 args: tuple[str, ...] = ()) -> None:
        self.base = Path(base)
        self.args = tuple(args)  # extra command-line flags (e.g. the SDXL server's dtypes)
        self.pack = Path(pack)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "comfyui.log"
        self.models = models or {}
        self.proc: subprocess.Popen | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> "ComfyServer":
        require_comfyui()
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(self.pack, target_is_directory=True)
        models_root = self.base / "models"
        for sub in ("input", "output", "temp", "user"):
            (self.base / sub).mkdir(exist_ok=True)
        for folder, files in self.models.items():
            (models_root / folder).mkdir(parents=True, exist_ok=True)
            for f in files:
                target = models_root / folder / Path(f).name
                if not target.exists():
                    target.symlink_to(Path(f).resolve())
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--dont-print-server",
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:", *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        self._log = open(self.log_path, "w")
        _started.append(self)
        self.proc = subprocess.Popen(cmd, cwd=COMFY_DIR, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- HTTP API ----------------------------------------------------------------------------
    def request(self, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw and raw[:1] in (b"{", b"[") else raw

    def get(self, path: str) -> Any:
        return self.request(path)

    def object_info(self) -> dict[str, Any]:
        return self.request("/object_info", timeout=120)

    def queue(self, prompt: dict[str, Any]) -> str:
        """POST /prompt; returns the prompt id (raises with the server's answer on a validation error)."""
        try:
            return self.request("/prompt", {"prompt": prompt, "client_id": "tests"})["prompt_id"]
        except urllib.error.HTTPError as err:
            raise AssertionError(f"/prompt refused the graph: {err.read().decode(errors='replace')}") from None

    def wait(self, prompt_id: str, timeout: float = 600) -> dict[str, Any]:
        """Poll /history until the prompt finished; return its entry (status, outputs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                history = self.get(f"/history/{prompt_id}")
            except (TimeoutError, urllib.error.URLError, ConnectionError):
                # a server busy loading a multi-gigabyte checkpoint can leave a request unanswered for a while
                if not self.alive():
                    raise AssertionError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-4000:]}") from None
                continue
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if not self.alive():
                raise AssertionError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-4000:]}")
            time.sleep(0.3)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def interrupt(self) -> None:
        self.request("/interrupt", {})

    def peak_rss_bytes(self) -> int | None:
        """The server process's peak resident memory so far (Linux's VmHWM), or None where /proc has no such line."""
        from ipadapter_train.training.memory import proc_status_peak

        return proc_status_peak(self.proc.pid) if self.proc is not None else None


def stop_all_servers() -> int:
    """Stop every server this test process started and is still running; returns how many. The SDXL module runs
    last (see tests/conftest.py) and calls this first: the SD1.5 servers' gigabytes are what it needs."""
    running = [server for server in _started if server.alive()]
    for server in running:
        server.stop()
    return len(running)


def release_freed_memory() -> None:
    """Hand memory this process has freed back to the system: collect garbage, then ask glibc to return its free
    heap (where there is a glibc: elsewhere collecting is all there is)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def status_messages(entry: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The payloads of one message kind (e.g. "execution_error") in a history entry."""
    return [payload for name, payload in entry.get("status", {}).get("messages", []) if name == kind]


def shared_model_files() -> dict[str, Path]:
    """Random-weight SD1.5 (tiny, ComfyUI-detectable) and ViT-L CLIP vision files of make-test-models, written
    once per test session (`conftest.random_model_files`): the server tests and the in-process node tests share
    them."""
    from conftest import random_model_files

    return random_model_files("sd15", "tiny", vision="vit-l")


# The SDXL server's UNet in bf16, as a GPU user would run it: ComfyUI casts each layer's weights to fp32 as it runs
# on the CPU. The text encoders and CLIP vision stay in fp16, ComfyUI's CPU default.
SDXL_SERVER_ARGS = ("--bf16-unet",)


def sdxl_model_files() -> dict[str, Path]:
    """A narrow random-weight SDXL checkpoint (every UNet level 320 wide: ComfyUI detects it as SDXL, see
    tests/test_sdxl_layout.py; 2.2 GiB in fp16 where the full size is 6.5 GiB) and a ViT-L CLIP vision file,
    written once per test session (`conftest.random_model_files`). ViT-L, not SDXL's usual ViT-H: the adapter is
    trained with whatever encoder it is given, and ViT-L is half the file."""
    from conftest import random_model_files

    return random_model_files("sdxl", "narrow", vision="vit-l", scorer="none")


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


SDXL_SERVER_MEMORY = 8 * 2**30  # the narrow SDXL server peaks at 5.7 GiB (measured; the full size at 15.0), plus a margin


@pytest.fixture(scope="module")
def sdxl_comfy(tmp_path_factory) -> ComfyServer:
    """A server of its own for a module's SDXL tests (bf16 UNet, see `SDXL_SERVER_ARGS`), with the narrow SDXL
    checkpoint and the ViT-L CLIP vision file of `sdxl_model_files`; stopped at the end of the module, so its
    memory is free for what runs next.

    The suite's other servers are stopped first (modules using this fixture run last) and this process gives back
    what it freed; if less than `SDXL_SERVER_MEMORY` is free even then, the server could be killed mid-run, so the
    module is skipped with the figures instead (a machine shared with other jobs)."""
    stopped = stop_all_servers()
    files = sdxl_model_files()
    release_freed_memory()
    available = available_memory_bytes()
    log.info("SDXL server: stopped %d other server(s); %.1f GiB free", stopped, (available or 0) / 2**30)
    if available is not None and available < SDXL_SERVER_MEMORY:
        pytest.skip(f"the SDXL server needs about {SDXL_SERVER_MEMORY / 2**30:.0f} GiB of free memory; "
                    f"{available / 2**30:.1f} GiB is available now")
    server = ComfyServer(tmp_path_factory.mktemp("comfy-sdxl-base"),
                         {"checkpoints": [files["sdxl"]], "clip_vision": [files["clip_vision"]]}, args=SDXL_SERVER_ARGS)
    server.start()
    try:
        yield server
    finally:
        peak = server.peak_rss_bytes()
        if peak:
            log.warning("SDXL server peak memory (RSS): %.1f GiB", peak / 2**30)
        server.stop()


@pytest.fixture(scope="session")
def test_models() -> dict[str, Path]:
    """The SD1.5 and CLIP vision files the `comfy` server loads (see `shared_model_files`)."""
    return shared_model_files()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory, test_models) -> ComfyServer:
    """A running server with the pack and the test models; stopped at the end of the session."""
    base = tmp_path_factory.mktemp("comfy-base")
    server = ComfyServer(base, {"checkpoints": [test_models["sd15"]], "clip_vision": [test_models["clip_vision"]]})
    server.start()
    yield server
    server.stop()
