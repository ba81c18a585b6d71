"""Shared fixtures: micro SD1.5-layout models built from configs with random weights (diffusers'
own testing convention), the shipped tokenizer and sample photos, the random-weight model files of
`make-test-models` written once per session (`random_model_files`), and the ComfyUI servers of
tests/comfyui/harness.py. Nothing is downloaded.

Every test module declares its tier, so that `pytest -m unit` runs only the fast in-process tests:

    pytestmark = pytest.mark.unit      # or cli, server, browser; a test's own tier marker overrides it

- unit: in-process (the core, the nodes, the CLI through `run_cli`);
- cli: runs a command in a subprocess (`cli()` here, or `subprocess` directly): process behaviour;
- server: starts a real ComfyUI server (the `comfy` fixture);
- browser: drives Chromium against a real ComfyUI.

A collected test without a tier stops the run at collection (`pytest_collection_modifyitems`).
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

SAMPLES = Path(__file__).resolve().parents[1] / "ipadapter_train" / "assets" / "samples"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under xdist (`-n N`) the workers share the cores: one torch thread per process, this worker and the
    # processes it starts (CLI runs, ComfyUI servers; they read the variable when torch loads). Two threads
    # each on two cores spin against each other and run slower than one.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
# the ComfyUI harness's fixtures are registered here (below), so every module shares one server
sys.path.append(str(Path(__file__).resolve().parent / "comfyui"))


def micro_sd15(seed: int = 0):
    """A 2-level SD1.5-style UNet 32/64 wide, a 1-layer 768-d CLIP text encoder and a tiny VAE (8x down).

    The cross-attention width stays 768, as in SD1.5, so the loaders accept it as an SD1.5 model."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ipadapter_train.models.sd15 import SD15, load_tokenizer, shipped_config_dir
    import json

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=768,
        attention_head_dim=2, sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=12, vocab_size=49408, max_position_embeddings=77))
    sched = json.loads((shipped_config_dir() / "scheduler" / "scheduler_config.json").read_text())
    for m in (unet, vae, text):
        m.eval().requires_grad_(False)
    return SD15(unet=unet, vae=vae, text_encoder=text, tokenizer=load_tokenizer(), scheduler_config=sched,
                source="micro-sd15 (random weights)", random_weights=True)


def micro_sdxl(seed: int = 0):
    """An SDXL-conditioned micro model: a 2-level UNet 32/64 wide with 2048-d cross-attention and SDXL's
    text_time extra conditioning, 2-layer CLIP-L (768) and bigG (1280, with projection) text encoders, a tiny VAE.

    A fresh copy each call (tests change models); built once per seed, since building costs seconds."""
    import copy

    return copy.deepcopy(_micro_sdxl(seed))


@functools.lru_cache(maxsize=2)
def _micro_sdxl(seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ipadapter_train.models.diffusion_model import DiffusionModel
    from ipadapter_train.families import SDXL
    from ipadapter_train.models.sd15 import load_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=2048,
        attention_head_dim=(2, 4), sample_size=8, transformer_layers_per_block=(1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=1280 + 6 * 8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.13025)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=12, vocab_size=49408, max_position_embeddings=77))
    text2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=64, num_hidden_layers=2,
                                                       num_attention_heads=20, vocab_size=49408, projection_dim=1280,
                                                       max_position_embeddings=77, hidden_act="gelu"))
    tok2 = load_tokenizer()
    tok2.pad_token = "!"
    for m in (unet, vae, text, text2):
        m.eval().requires_grad_(False)
    return DiffusionModel(SDXL, unet, vae, [text, text2], [load_tokenizer(), tok2], SDXL.config(
        "scheduler/scheduler_config.json"), "micro-sdxl (random weights)", random_weights=True)


def micro_clip(seed: int = 0):
    """The `tiny` CLIP vision preset: 64 wide, 2 layers, 32-d embedding."""
    from ipadapter_train.models.clip_vision import build_clip_vision

    return build_clip_vision("tiny", seed=seed)


@pytest.fixture
def samples():
    from ipadapter_train.storage.data import load_image_folder

    return load_image_folder(SAMPLES)[0]


@pytest.fixture(autouse=True)
def _quiet_libraries():
    for name in ("accelerate", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    yield


ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: int = 600, module: tuple[str, ...] = ("-m", "ipadapter_train")) -> subprocess.CompletedProcess:
    """The command in a subprocess (a fresh interpreter: torch imports again, seconds per call).

    For tests about the process itself: exit status of the real entry point, launchers, signals.
    Tests that only want the command's result use `run_cli` (same result object, in-process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *module, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`ipadapter_train.cli.main.main(args)` in this process: its exit status, stdout and stderr (its log lines).

    argparse's exits (--help, usage errors) become the return code. The logging set-up `main` makes
    (basicConfig on the root logger, library levels) is undone afterwards, so pytest's log capture and
    the next test see the logging they had. The CLI's glibc allocator tweak is skipped: it is meant for
    a one-shot process and would stay for the rest of the test session."""
    from ipadapter_train.training import allocator
    from ipadapter_train.cli.main import main

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("accelerate", "diffusers", "transformers", "PIL")}
    out, err = io.StringIO(), io.StringIO()
    # basicConfig only configures a root logger without handlers: give it none, so that it attaches
    # its handler to the redirected stderr, as it does in a fresh process
    root.handlers = []
    keep_freed_memory = allocator.keep_freed_memory
    allocator.keep_freed_memory = lambda: False
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: --help, usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        allocator.keep_freed_memory = keep_freed_memory
        for handler in root.handlers:
            handler.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)
    return subprocess.CompletedProcess(["ipadapter-train", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """A micro SD1.5 in diffusers folder layout and a tiny CLIP vision file, random weights."""
    from diffusers import PNDMScheduler

    from ipadapter_train.models.clip_vision import save_clip_vision
    from ipadapter_train.models.sd15 import shipped_config_dir

    root = tmp_path_factory.mktemp("models")
    sd = micro_sd15()
    folder = root / "sd15"
    sd.unet.save_pretrained(folder / "unet")
    sd.vae.save_pretrained(folder / "vae")
    sd.text_encoder.save_pretrained(folder / "text_encoder")
    sd.tokenizer.save_pretrained(folder / "tokenizer")
    PNDMScheduler.from_config(sd.scheduler_config).save_pretrained(folder / "scheduler")
    shutil.copy(shipped_config_dir() / "model_index.json", folder / "model_index.json")
    clip = root / "clip.safetensors"
    save_clip_vision(micro_clip(), clip)
    return {"sd": folder, "clip": clip, "root": root}


def train_args(models, out: Path, *extra: str) -> list[str]:
    """A CLI training run on the micro models; previews off (the CLI's default renders them: tests of previews
    turn them on with --preview-every in `extra`, the last one given wins)."""
    return ["train", "--images", str(SAMPLES), "--base-model", str(models["sd"]), "--image-encoder",
            str(models["clip"]), "--out", str(out), "--resolution", "64", "--precision", "no",
            "--no-validation", "--preview-every", "0", *extra]


@pytest.fixture(scope="session")
def trained_adapter_file(models, tmp_path_factory) -> Path:
    """An adapter file trained once per session (2 steps at 64 px on the micro models in `models`).

    For tests that need "a trained adapter file": read it, never write next to it."""
    out = tmp_path_factory.mktemp("trained") / "adapter.safetensors"
    r = run_cli(*train_args(models, out, "--max-steps", "2"))
    assert r.returncode == 0, r.stderr
    return out


# ---------------------------------------------------------------------------- random-weight model files

_model_folder: list[Path] = []  # where `random_model_files` writes in this session (`_random_model_folder`)
model_builds: dict[tuple, float] = {}  # the arguments of each build this session -> its seconds
model_reuses: Counter = Counter()  # the arguments -> how many calls found the files already written


def random_model_files(family: str = "sd15", size: str = "tiny", vision: str | None = None, scorer: str | None = None,
                       seed: int = 0) -> dict[str, Path]:
    """The files of `make_test_models(family, size, vision, seed, scorer)` ({family: ..., "clip_vision": ...,
    "clip_scorer": ...}), written once per test session and shared by every test that asks for the same arguments
    (defaults filled in first: the family's default vision and the size's default scorer are the same entry).

    Read them, never change them: copy a file first. They live in one folder of the session's temporary
    directory, removed at the session's end (a narrow SDXL is 2.2 GiB)."""
    from ipadapter_train.models.testmodels import DEFAULT_VISION, SCORER_PRESET

    key = (family, size, vision or DEFAULT_VISION.get(family, "vit-h"), scorer or SCORER_PRESET[size], seed)
    if key in model_builds:
        model_reuses[key] += 1
    return dict(_written(*key))


@functools.lru_cache(maxsize=None)
def _written(family: str, size: str, vision: str, scorer: str, seed: int) -> dict[str, Path]:
    from ipadapter_train.models.testmodels import make_test_models

    if not _model_folder:  # outside a test session: a folder of its own, removed at exit
        _model_folder.append(Path(tempfile.mkdtemp(prefix="ipadapter-train-test-models-")))
        import atexit

        atexit.register(shutil.rmtree, _model_folder[0], True)
    key = (family, size, vision, scorer, seed)
    start = time.perf_counter()
    files = make_test_models(_model_folder[0] / "-".join(map(str, key)), size=size, vision=vision, seed=seed,
                             family=family, scorer=scorer)
    model_builds[key] = time.perf_counter() - start
    return files


@pytest.fixture(scope="session", autouse=True)
def _random_model_folder(tmp_path_factory):
    """The session's folder for `random_model_files`, emptied at the session's end: pytest keeps the temporary
    directories of the last sessions, and these files are large."""
    folder = tmp_path_factory.mktemp("random-models")
    _model_folder[:] = [folder]
    yield folder
    _written.cache_clear()
    shutil.rmtree(folder, ignore_errors=True)


# ComfyUI servers (tests/comfyui/harness.py), registered here for every module: `comfy` is one server for the
# session. A module that imports a fixture from harness instead gets an instance of its own (a second server).
from harness import comfy, sdxl_comfy, test_models  # noqa: E402,F401


# ---------------------------------------------------------------------------------------------- tiers

TIERS = ("unit", "cli", "server", "browser")
# The SDXL server stops every other server before it starts: its tests run last.
LAST_FIXTURES = {"sdxl_comfy"}


def tier_of(item) -> str | None:
    """The tier a collected test declares: its closest tier marker (its own, else its class's, else its module's
    `pytestmark`), or None."""
    return next((mark.name for mark in item.iter_markers() if mark.name in TIERS), None)


def runs_last(item) -> bool:
    """Whether a collected test uses a fixture of `LAST_FIXTURES` (the sort key that moves it to the end)."""
    return bool(LAST_FIXTURES & set(getattr(item, "fixturenames", ())))


def undeclared_tiers(items) -> str | None:
    """The sentence that refuses collected tests without a tier, or None when every test has one."""
    files = sorted({item.nodeid.split("::")[0] for item in items if tier_of(item) is None})
    if not files:
        return None
    return (f"{len(files)} test module(s) declare no tier ({', '.join(files)}): add `pytestmark = pytest.mark.unit` "
            f"(or cli, server, browser) to each, see tests/conftest.py.")


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(config, items):
    """Refuse tests without a tier; leave each test exactly one tier marker, its closest declaration (so that
    `-m unit` leaves out a cli test of a unit module); move the tests of `LAST_FIXTURES` to the end (in their
    order), since their fixture stops the other servers."""
    refusal = undeclared_tiers(items) or misplaced_server_tests(items)
    if refusal:
        raise pytest.UsageError(refusal)
    tiers = [tier_of(item) for item in items]
    for node in {parent for item in items for parent in item.listchain()}:
        node.own_markers[:] = [mark for mark in node.own_markers if mark.name not in TIERS]
    for item, tier in zip(items, tiers):
        item.add_marker(getattr(pytest.mark, tier))
        item.user_properties.append(("tier", tier))  # travels with its reports, to an xdist controller too
    items.sort(key=runs_last)  # stable: the others keep their order


# Under pytest-xdist (`.ci/run` passes `-n 2`) each test module is one unit of work, and the modules that start
# ComfyUI servers (server and browser tiers) are one unit together: one worker runs them one after another in their
# collected order (one shared server; the SDXL server last, with the others stopped), while the other modules are
# shared out between both workers around them. The controller sees test ids only, so these modules are known by
# their names, and a server or browser test anywhere else is refused at collection.
SERVER_TIERS = ("server", "browser")
SERVER_MODULES = ("tests/comfyui/test_server_*.py", "tests/comfyui/test_browser*.py")
SERVER_GROUP = "comfyui-servers"


def is_server_module(module: str) -> bool:
    """Whether a test module (its path in a test id) is one of `SERVER_MODULES`."""
    return any(fnmatch.fnmatch(module, pattern) for pattern in SERVER_MODULES)


def misplaced_server_tests(items) -> str | None:
    """The sentence that refuses server or browser tests outside `SERVER_MODULES`, or None."""
    files = sorted({item.nodeid.split("::")[0] for item in items
                    if tier_of(item) in SERVER_TIERS and not is_server_module(item.nodeid.split("::")[0])})
    if not files:
        return None
    return (f"{len(files)} test module(s) outside {' or '.join(SERVER_MODULES)} hold server or browser tests "
            f"({', '.join(files)}): move them into such a module, so that parallel runs keep them on one worker.")


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest without xdist has no such hook
def pytest_xdist_make_scheduler(config, log):
    """Modules as units of work, the server modules one unit (see `SERVER_MODULES`)."""
    from xdist.scheduler import LoadScopeScheduling

    class ServersOnOneWorker(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the longest units first, so that none of them is left for the end
                for unit in reversed(LONG_UNITS):
                    if unit in self.workqueue:
                        self.workqueue.move_to_end(unit, last=False)
                self.ordered = True
            super()._assign_work_unit(node)

    return ServersOnOneWorker(config, log)


# The units of work that take longest (BENCHMARKS.md "Test suite budget"), handed out first; xdist alone orders
# units by their number of tests, which left a 2-test module of over a minute for the end.
LONG_UNITS = (SERVER_GROUP, "tests/test_world_learning.py", "tests/test_world_following.py", "tests/test_faults_run.py",
              "tests/test_search_world.py", "tests/test_cli_search.py",
              "tests/test_world_build.py", "tests/test_training.py", "tests/test_cli.py")


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to under xdist: its module, or `SERVER_GROUP` for the server modules."""
    module = nodeid.split("::", 1)[0]
    return SERVER_GROUP if is_server_module(module) else module


_tier_tests: dict[str, int] = defaultdict(int)
_tier_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    """Count the tests and sum their set-up, call and tear-down time per tier (read from the report, so that the
    xdist controller, which collects nothing itself, counts its workers' tests too; a worker's own count is
    never shown)."""
    tier = dict(report.user_properties).get("tier")
    if tier is None:
        return
    _tier_tests[tier] += report.when == "setup"
    _tier_seconds[tier] += report.duration


def pytest_sessionfinish(session):
    """An xdist worker hands its model-file counts to the controller (`pytest_testnodedown`)."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["model_builds"] = [[list(k), v] for k, v in model_builds.items()]
        session.config.workeroutput["model_reuses"] = sum(model_reuses.values())


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest without xdist has no such hook
def pytest_testnodedown(node, error):
    """The controller adds up what each xdist worker built (each worker builds the files it needs once)."""
    out = getattr(node, "workeroutput", {})
    for key, seconds in out.get("model_builds", []):
        model_builds[(node.gateway.id, *key)] = seconds
    if out.get("model_reuses"):
        model_reuses[node.gateway.id] += out["model_reuses"]


def pytest_terminal_summary(terminalreporter):
    """One line: tests and seconds per tier, to see where the suite's time goes; one on the shared model files."""
    parts = [f"{tier} {_tier_tests[tier]} tests {_tier_seconds[tier]:.0f} s" for tier in TIERS if _tier_tests[tier]]
    if parts:
        terminalreporter.write_line("tiers: " + ", ".join(parts))
    if model_builds:
        terminalreporter.write_line(f"test model files: {len(model_builds)} built in {sum(model_builds.values()):.0f} s, "
                                    f"asked for again {sum(model_reuses.values())} times")
