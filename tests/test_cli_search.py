"""`ipadapter-train search` on the learned world: the command, its page and summary, a rerun of the best settings,
an interrupted search continued from its storage by a second process, and two processes sharing one SQLite study.
Learned-world figures: they show the machinery, nothing about quality on real SD models."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from safetensors.torch import load_file

from ipadapter_train.world.attribute_set import AttributeSet, write_attribute_set
from ipadapter_train.world.shipped import world_files

from conftest import ROOT, run_cli

pytestmark = pytest.mark.cli

SPACE = ("[max_steps]\nvalue = 6\n\n[batch_size]\nvalue = 4\n\n[variant]\nvalue = \"base\"\n\n"
         "[learning_rate]\nlow = 3e-4\nhigh = 3e-3\nlog = true\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("search_cli")
    space = tmp / "space.toml"
    space.write_text(SPACE, encoding="utf-8")
    return {**world_files(), "images": write_attribute_set(tmp / "images", AttributeSet()), "space": space}


def search_args(world: dict[str, Path], out: Path, *extra: str, clip: bool = True) -> list[str]:
    """A short search: 6 steps a trial, a preview round after 3 and 6 (small, few sampling steps)."""
    args = ["search", "--images", str(world["images"]), "--base-model", str(world["model"]), "--image-encoder",
            str(world["clip"]), "--out", str(out), "--space", str(world["space"]), "--resolution", "64",
            "--preview-every", "3", "--preview-size", "64", "--preview-steps", "6", "--checkpoint-every", "0",
            "--no-validation", *extra]
    return args + (["--clip", str(world["clip"])] if clip else [])


def popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ipadapter_train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def trials_of(storage: str, name: str = "ipadapter-search") -> list[optuna.trial.FrozenTrial]:
    return sorted(optuna.load_study(study_name=name, storage=storage).trials, key=lambda t: t.number)


@pytest.mark.unit
def test_search_writes_the_best_adapter_a_page_and_a_rerun_command_that_trains_it_again(world, tmp_path):
    out = tmp_path / "best.safetensors"
    result = run_cli(*search_args(world, out, "--trials", "2", "--no-prune", "--try", "defaults"))
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "best-search"
    study = optuna.load_study(study_name="ipadapter-search", storage=f"sqlite:///{folder / 'search.db'}")
    best = study.best_trial
    assert len(study.trials) == 2 and out.read_bytes() == Path(best.user_attrs["adapter"]).read_bytes()
    assert "judged by the held-out preview score" in result.stdout
    # the defaults were tried first (the training default lr 1e-4, the dropout 0.05), and the summary says so
    first = min(study.trials, key=lambda t: t.number)
    assert first.params == {"learning_rate": 1e-4, "drop": 0.05} and first.user_attrs["tried"] == "defaults"
    assert "trial   0 (defaults): learning_rate=1.0e-04, drop=0.05 -> " in result.stdout
    assert ("against the defaults (trial 0): " in result.stdout) == (best.number != 0)  # compared unless best
    page = (folder / "search.html").read_text(encoding="utf-8")
    assert page.count("<tr") == 3 and page.count("<svg") == 3  # learning rate, dropout, time
    assert f"src='trial_{best.number:03d}/previews/step_" in page
    command = result.stdout.split("rerun the best settings:\n", 1)[1].strip()
    assert f"--lr {best.params['learning_rate']!r}" in command and "--keep best" in command
    again = run_cli(*shlex.split(command.replace(str(tmp_path / "best-rerun"), str(tmp_path / "again")))[1:])
    assert again.returncode == 0, again.stderr
    # the same settings and seed train the same adapter: the rerun is the best trial, tensor for tensor
    rerun, trial = load_file(tmp_path / "again.safetensors"), load_file(best.user_attrs["adapter"])
    assert rerun.keys() == trial.keys() and all((rerun[k] == trial[k]).all() for k in trial)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is a POSIX signal; Windows sends CTRL_C_EVENT")
def test_an_interrupted_search_is_continued_by_two_processes_sharing_its_sqlite_storage(world, tmp_path):
    """Ctrl-C in the second trial; then two processes at once on the same storage finish the study: the finished
    trial is kept, no trial runs twice. No scorer: the search says it judges by the held-out validation loss."""
    storage, folder = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "trials"
    args = search_args(world, tmp_path / "best.safetensors", "--storage", storage, "--folder", str(folder),
                       "--no-prune", clip=False)
    first = popen([*args, "--trials", "3"])
    deadline = time.monotonic() + 300
    while not (folder / "trial_001" / "previews").is_dir() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the second trial is training: its first round is written
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "run the same command to continue it" in err and "No scorer was given" in err
    assert [t.state.name for t in trials_of(storage)] == ["COMPLETE", "FAIL"]
    kept = (folder / "trial_000.safetensors").stat().st_mtime_ns

    runs = [popen([*args[:args.index("--out") + 1], str(tmp_path / f"best{i}.safetensors"),
                   *args[args.index("--out") + 2:], "--trials", "4"]) for i in range(2)]
    outputs = [p.communicate(timeout=400) for p in runs]
    for p, (stdout, stderr) in zip(runs, outputs):
        assert p.returncode == 0, stderr
        assert "judged by the held-out validation loss" in stdout
    ran = [set(int(n) for n in re.findall(r"Trial (\d+): ", stderr)) for _, stderr in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1], ran  # both worked on the study, no trial twice
    trials = trials_of(storage)
    assert {t.number for t in trials} == {0, 1} | ran[0] | ran[1]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert 4 <= len(done) <= 5 and trials[1].state.name == "FAIL"  # each process may start one more than needed
    assert (folder / "trial_000.safetensors").stat().st_mtime_ns == kept  # the finished trial was not run again
    for t in done:  # lower is better: the held-out loss of the last round, each round reported
        assert (folder / f"trial_{t.number:03d}" / "report.json").is_file() and t.value > 0
        assert sorted(t.intermediate_values) == [3, 6] and t.value == t.intermediate_values[6]
    # each process writes the best trial of the study as it found it at its end; the later one, the study's best
    adapters = {Path(t.user_attrs["adapter"]).read_bytes(): t for t in done}
    written = [adapters[(tmp_path / f"best{i}.safetensors").read_bytes()] for i in range(2)]
    assert min(done, key=lambda t: t.value) in written
