"""Faults around a training run (issue 12): the same seed gives the same file, a run killed with kill -9 or
stopped by Ctrl-C resumes to what an uninterrupted run gives, outputs that cannot or must not be written are
refused before any model loads, and a failed or killed save loses nothing. Real files, micro models."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, cli, run_cli, train_args

pytestmark = pytest.mark.unit


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_bit_equal(a: Path, b: Path) -> None:
    first, second = tensors(a), tensors(b)
    assert first.keys() == second.keys()
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{len(differ)} of {len(first)} tensors differ, e.g. {differ[0]}"


def one_error(r: subprocess.CompletedProcess) -> str:
    """The run's single ERROR line (and no traceback)."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return errors[0]


# ---------------------------------------------------------------- the same seed, the same adapter


def test_two_plain_cli_runs_with_the_same_seed_give_bit_equal_adapters(models, tmp_path):
    outs = [tmp_path / "one" / "a.safetensors", tmp_path / "two" / "a.safetensors"]
    for draw, out in zip((1, 2), outs):
        torch.manual_seed(draw)  # whatever the process drew before must not matter
        torch.rand(draw)
        r = run_cli(*train_args(models, out, "--max-steps", "3", "--seed", "7"))
        assert r.returncode == 0, r.stderr[-3000:]
    assert_bit_equal(*outs)


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_with_checkpoints_off_prints_a_resume_command_that_works(models, tmp_path, monkeypatch):
    plain = tmp_path / "plain.safetensors"
    r = run_cli(*train_args(models, plain, "--max-steps", "5", "--seed", "7", "--checkpoint-every", "0"))
    assert r.returncode == 0, r.stderr[-3000:]

    import contextlib

    from ipadapter_train.cli import training as cli_training

    @contextlib.contextmanager
    def ctrl_c_at_step_2(label):
        def progress(event):
            if event.phase == "training" and event.done == 2:
                raise KeyboardInterrupt  # what Ctrl-C raises in the step loop's main thread

        yield progress

    out = tmp_path / "stopped.safetensors"
    args = train_args(models, out, "--max-steps", "5", "--seed", "7", "--checkpoint-every", "0")
    with monkeypatch.context() as patch:
        patch.setattr(cli_training, "_progress", ctrl_c_at_step_2)
        r = run_cli(*args)
    assert r.returncode == 130, r.stderr[-3000:]
    resume = re.search(r"continue with --resume (\S+)", r.stderr)
    assert resume, r.stderr[-3000:]
    r = run_cli(*args, "--resume", resume.group(1))  # the same command, plus what the message says
    assert r.returncode == 0, r.stderr[-3000:]
    assert_bit_equal(plain, out)


# ---------------------------------------------------------------- outputs checked before the models load


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading a model fails the test: a refusal must come before any model work."""
    import ipadapter_train.models.clip_vision as clip_vision
    import ipadapter_train.models.loading as model_loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr(model_loading, "load_model", refuse)
    monkeypatch.setattr(clip_vision, "load_clip_vision", refuse)


def test_an_existing_out_is_refused_unless_overwrite(models, tmp_path, no_model_loading):
    out = tmp_path / "a.safetensors"
    out.write_bytes(b"someone else's file")
    r = run_cli(*train_args(models, out, "--max-steps", "1"))
    assert r.returncode == 2 and "already exists" in one_error(r) and "--overwrite" in one_error(r)
    assert out.read_bytes() == b"someone else's file" and not (tmp_path / "a-run").exists()


def test_overwrite_replaces_an_existing_out(models, tmp_path):
    out = tmp_path / "a.safetensors"
    out.write_bytes(b"an old adapter")
    r = run_cli(*train_args(models, out, "--max-steps", "1", "--overwrite"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "image_proj.proj.weight" in tensors(out)


def test_no_input_of_the_run_is_ever_written_over_even_with_overwrite(models, tmp_path, no_model_loading):
    from conftest import SAMPLES

    images = tmp_path / "images"
    images.mkdir()
    for picture in sorted(SAMPLES.iterdir()):
        (images / picture.name).write_bytes(picture.read_bytes())
    init = tmp_path / "init.safetensors"
    init.write_bytes(b"init adapter bytes")
    model_file = next(p for p in sorted(models["sd"].rglob("*.safetensors")))
    before = {p: p.read_bytes() for p in (init, models["clip"], model_file)}
    cases = {
        "the image encoder": models["clip"],
        "a file in the base model's folder": model_file,
        "the init adapter": init,
        "a file in the images folder": images / "x.safetensors",
    }
    (images / "x.safetensors").write_bytes(b"a file among the images")
    for name, out in cases.items():
        args = train_args(models, out, "--max-steps", "1", "--overwrite", "--init-adapter", str(init))
        args[args.index("--images") + 1] = str(images)
        r = run_cli(*args)
        assert r.returncode == 2, (name, r.stderr[-3000:])
        assert "which this run reads" in one_error(r), name
    assert {p: p.read_bytes() for p in before} == before
    assert (images / "x.safetensors").read_bytes() == b"a file among the images"


def test_the_base_model_file_itself_is_never_the_out(models, tmp_path, no_model_loading):
    base = tmp_path / "m.safetensors"
    base.write_bytes(b"a 607 MB checkpoint, in spirit")
    args = train_args(models, base, "--max-steps", "1", "--overwrite")
    args[args.index("--base-model") + 1] = str(base)
    r = run_cli(*args)
    assert r.returncode == 2 and "which this run reads" in one_error(r)
    assert base.read_bytes() == b"a 607 MB checkpoint, in spirit"


def test_a_run_folder_inside_the_images_and_an_out_inside_the_resumed_checkpoint_are_refused(models, tmp_path):
    from conftest import SAMPLES

    images = tmp_path / "images"
    images.mkdir()
    for picture in sorted(SAMPLES.iterdir()):
        (images / picture.name).write_bytes(picture.read_bytes())
    args = train_args(models, tmp_path / "a.safetensors", "--max-steps", "1", "--run-dir", str(images / "run"))
    args[args.index("--images") + 1] = str(images)
    r = run_cli(*args)
    assert r.returncode == 2 and "lies inside" in one_error(r) and not (images / "run").exists()

    assert run_cli(*train_args(models, tmp_path / "b.safetensors", "--max-steps", "1")).returncode == 0
    checkpoint = tmp_path / "b-run" / "checkpoint"
    before = (checkpoint / "adapter.safetensors").read_bytes()
    r = run_cli(*train_args(models, checkpoint / "adapter.safetensors", "--max-steps", "2", "--overwrite",
                            "--resume", str(tmp_path / "b-run")))
    assert r.returncode == 2 and "which this run reads" in one_error(r)
    assert (checkpoint / "adapter.safetensors").read_bytes() == before


def _make_unwritable(folder: Path):
    """Make `folder` refuse new files (chmod; as root, the immutable attribute); None if this system cannot."""
    folder.chmod(0o555)
    undo = [lambda: folder.chmod(0o755)]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
            undo.insert(0, lambda: subprocess.run(["chattr", "-i", str(folder)], capture_output=True))
    probe = folder / "probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return undo
    probe.unlink()
    for step in undo:
        step()
    return None


def test_an_out_in_a_read_only_folder_is_refused_before_any_model_loads(models, tmp_path, no_model_loading):
    folder = tmp_path / "ro"
    folder.mkdir()
    undo = _make_unwritable(folder)
    if undo is None:
        pytest.skip("cannot make a folder read-only here (no chmod effect, no chattr)")
    try:  # the folder itself, and a folder still to be made inside it
        runs = [run_cli(*train_args(models, out, "--max-steps", "1", "--run-dir", str(tmp_path / "run")))
                for out in (folder / "a.safetensors", folder / "new" / "a.safetensors")]
    finally:
        for step in undo:
            step()
    for r, named in zip(runs, (folder, folder / "new")):
        assert r.returncode == 2
        message = one_error(r)
        assert f"Cannot write into {named} " in message, message
    assert not (tmp_path / "run").exists() and list(folder.iterdir()) == []


# ---------------------------------------------------------------- a save that fails or is killed


@pytest.mark.parametrize("failure", ["safetensors", "oserror"])
def test_a_full_disk_during_the_save_is_one_sentence_and_the_previous_file_is_intact(models, tmp_path, monkeypatch,
                                                                                       failure):
    from safetensors import SafetensorError

    import ipadapter_train.storage.weights_io as weights_io

    out = tmp_path / "a.safetensors"
    out.write_bytes(b"the previous adapter")
    real_save = weights_io.save_file

    def full_disk(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".a.safetensors."):  # only the adapter file's save fails
            Path(filename).write_bytes(b"half a file")
            if failure == "safetensors":  # what safetensors raises on a full disk
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(weights_io, "save_file", full_disk)
    r = run_cli(*train_args(models, out, "--max-steps", "1", "--overwrite"))
    assert r.returncode == 2
    message = one_error(r)
    assert str(out) in message and "the disk is full" in message and "previous file there is intact" in message
    assert out.read_bytes() == b"the previous adapter"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(sys.platform != "linux", reason="a small tmpfs stands for a full disk on Linux")
def test_a_really_full_disk_during_the_save_is_one_sentence_and_the_previous_file_is_intact(models, tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    if not (hasattr(os, "geteuid") and os.geteuid() == 0) or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (the monkeypatched cases above still run)")
    try:
        out = disk / "a.safetensors"
        out.write_bytes(b"the previous adapter")  # the new adapter (about 200 kB in fp16) does not fit
        r = run_cli(*train_args(models, out, "--max-steps", "1", "--overwrite", "--run-dir", str(tmp_path / "run")))
        left = sorted(p.name for p in disk.iterdir())
        previous = out.read_bytes()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert r.returncode == 2
    message = one_error(r)
    assert str(out) in message and "the disk is full" in message and "previous file there is intact" in message
    assert previous == b"the previous adapter" and left == ["a.safetensors"]


def test_temporaries_of_a_killed_save_are_removed_by_the_next_run(models, tmp_path):
    out = tmp_path / "a.safetensors"
    run = tmp_path / "a-run"
    run.mkdir()
    stale = [tmp_path / ".a.safetensors.0123456789ab.tmp", run / ".checkpoint.ba9876543210.tmp",
             run / ".report.json.00112233aabb.tmp"]
    stale[0].write_bytes(b"half an adapter")
    stale[1].mkdir()
    (stale[1] / "adapter.safetensors").write_bytes(b"half a checkpoint")
    stale[2].write_text("{")
    others = [tmp_path / ".b.safetensors.0123456789ab.tmp", tmp_path / ".a.safetensors.notahexname1.tmp",
              tmp_path / "a.safetensors.0123456789ab.tmp"]
    for path in others:
        path.write_bytes(b"not ours")
    old = time.time() - 3600
    for path in stale + others:
        os.utime(path, (old, old))
    r = run_cli(*train_args(models, out, "--max-steps", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)
    assert "left by an interrupted write" in r.stderr


# ---------------------------------------------------------------- previews on a full disk (issue 17, item 10)


def _fail_preview_texts(monkeypatch) -> None:
    """scores.json and previews.html meet a full disk (ENOSPC after half a file); every other write goes through."""
    import ipadapter_train.training.trainer  # noqa: F401 (imported now: a module imported while patched would keep the patch)
    import ipadapter_train.storage.weights_io as weights_io

    real = weights_io.atomic_write

    def atomic_write(path, write, *more, **options):
        if Path(path).name not in ("scores.json", "previews.html"):
            return real(path, write, *more, **options)

        def half_then_full(tmp):
            tmp.write_bytes(b"half a page")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, half_then_full, *more, **options)

    monkeypatch.setattr(weights_io, "atomic_write", atomic_write)


@pytest.mark.parametrize("keep", ["last", "best"])
def test_preview_files_that_cannot_be_written_are_warnings_and_the_run_keeps_its_checkpoints_and_adapter(
        models, tmp_path, monkeypatch, keep):
    from ipadapter_train.models.clip_model import build_clip, save_clip

    out = tmp_path / "a.safetensors"
    run = tmp_path / "a-run"
    grids = run / "previews"
    grids.mkdir(parents=True)
    undo = _make_unwritable(grids)  # the grids fail for real: a folder that takes no file
    extra = ["--max-steps", "4", "--preview-every", "2", "--preview-steps", "2", "--checkpoint-every", "2"]
    if keep == "best":
        save_clip(build_clip("tiny", seed=1), tmp_path / "clip.safetensors")
        extra += ["--clip", str(tmp_path / "clip.safetensors"), "--keep", "best"]
    try:
        _fail_preview_texts(monkeypatch)
        r = run_cli(*train_args(models, out, *extra))
    finally:
        for step in undo or ():
            step()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr
    warned = [line for line in r.stderr.splitlines() if "Could not write the preview file" in line]
    assert warned and all("training goes on" in line for line in warned), r.stderr[-3000:]
    assert any("the disk is full" in line for line in warned)
    # every step trained, checkpointed and saved
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 4 and "previews.html" in report["previews"]["unwritten"]
    metadata = json.loads(subprocess.run([sys.executable, "-c", "import json,sys; from safetensors import safe_open;"
                                          "print(json.dumps(safe_open(sys.argv[1], 'pt').metadata()))", str(out)],
                                         capture_output=True, text=True, check=True).stdout)
    if keep == "best":  # the best step's weights were kept in memory and in the checkpoint though no grid was
        assert metadata["kept"] == "best" and (tmp_path / "a-last.safetensors").is_file()
        assert (run / "checkpoint" / "best.safetensors").is_file()
    else:
        assert metadata["steps"] == "4"
    if undo is not None:
        assert report["previews"]["grids"] == [] and list(grids.iterdir()) == []
    assert not (run / "scores.json").exists() and not (run / "previews.html").exists()
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_a_checkpoint_whose_best_weights_cannot_be_written_stops_in_one_sentence_keeping_the_previous_one(
        models, tmp_path, monkeypatch):
    """The decision for best.safetensors: it is part of the checkpoint folder, which is swapped in whole, so it
    fails as a checkpoint does (one sentence, exit 2) and the previous checkpoint, with its own best weights,
    stays for --resume. (This pins behaviour the code already had.)"""
    from ipadapter_train.models.clip_model import build_clip, save_clip
    import ipadapter_train.storage.weights_io as weights_io

    save_clip(build_clip("tiny", seed=1), tmp_path / "clip.safetensors")
    real_save = weights_io.save_file
    best_saves = []

    def full_disk_at_the_second_best(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".best.safetensors."):
            best_saves.append(filename)
            if len(best_saves) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(weights_io, "save_file", full_disk_at_the_second_best)
    out = tmp_path / "a.safetensors"
    r = run_cli(*train_args(models, out, "--max-steps", "6", "--preview-every", "2", "--preview-steps", "2",
                            "--checkpoint-every", "2", "--clip", str(tmp_path / "clip.safetensors"), "--keep", "best"))
    assert r.returncode == 2
    assert "Could not write" in one_error(r) and "the disk is full" in one_error(r)
    checkpoint = tmp_path / "a-run" / "checkpoint"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2
    assert (checkpoint / "best.safetensors").is_file() and not out.exists()


# ---------------------------------------------------------------- one run per output (issue 17, item 12)

# A CLI run that holds at the start of its final phase until the file `go` appears: the test decides when it ends.
_HELD_RUN = """
import sys, time
from pathlib import Path
from ipadapter_train.training import trainer
from ipadapter_train.cli.main import main

go, args = Path(sys.argv[1]), sys.argv[2:]
finish = trainer.TrainingRun.finish

def held_finish(self):
    Path(str(go) + ".waiting").write_text("")
    while not go.exists():
        time.sleep(0.05)
    finish(self)

trainer.TrainingRun.finish = held_finish
sys.exit(main(args))
"""


def _start_held(models, out: Path, go: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", _HELD_RUN, str(go), *train_args(models, out, "--max-steps", "2")],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"the held run never got there; exit {proc.poll()}"


@pytest.mark.cli
@pytest.mark.skipif(sys.platform != "linux", reason="kill -9 of the holder is tested on Linux")
def test_a_second_run_to_the_same_out_is_refused_while_the_first_holds_it_and_a_killed_holder_blocks_nothing(
        models, tmp_path):
    out, go = tmp_path / "a.safetensors", tmp_path / "go"
    first = _start_held(models, out, go)
    try:
        _wait_for(Path(str(go) + ".waiting"), first)  # trained, holding the output, not yet saved
        second = run_cli(*train_args(models, out, "--max-steps", "1", "--overwrite"))
        elsewhere = run_cli(*train_args(models, tmp_path / "b.safetensors", "--max-steps", "1", "--run-dir",
                                        str(tmp_path / "a-run")))
        go.write_text("")
        assert first.wait(300) == 0, first.stderr.read()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
        first.stderr.close()
    assert second.returncode == 2
    assert f"Another run is writing {out} (--out) now" in one_error(second)
    assert elsewhere.returncode == 2 and "Another run is writing" in one_error(elsewhere)
    assert "the run folder" in one_error(elsewhere) and not (tmp_path / "b.safetensors").exists()
    metadata = json.loads(subprocess.run([sys.executable, "-c", "import json,sys; from safetensors import safe_open;"
                                          "print(json.dumps(safe_open(sys.argv[1], 'pt').metadata()))", str(out)],
                                         capture_output=True, text=True, check=True).stdout)
    assert metadata["steps"] == "2"  # the first run's adapter, not the refused one's (1 step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-run", "a.safetensors", "go", "go.waiting"]

    # kill -9 of a holder leaves its lock file, but not its lock: the next run goes ahead
    go.unlink()
    Path(str(go) + ".waiting").unlink()
    held = _start_held(models, tmp_path / "c.safetensors", go)
    try:
        _wait_for(Path(str(go) + ".waiting"), held)
        held.send_signal(signal.SIGKILL)
        assert held.wait(60) == -signal.SIGKILL
    finally:
        if held.poll() is None:
            held.kill()
        held.wait()
        held.stderr.close()
    assert (tmp_path / ".c.safetensors.lock").exists()
    r = run_cli(*train_args(models, tmp_path / "c.safetensors", "--max-steps", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "c.safetensors").is_file() and not (tmp_path / ".c.safetensors.lock").exists()


# ---------------------------------------------------------------- temporaries of safetensors itself (item 14)


@pytest.mark.cli
@pytest.mark.skipif(sys.platform != "linux", reason="kill -9 mid-write is tested on Linux")
def test_a_kill_9_during_a_save_leaves_only_a_temporary_named_after_the_target_and_the_next_run_removes_it(
        models, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "a.safetensors"
    save = ("import sys, time, torch; from ipadapter_train.storage.weights_io import save_safetensors_atomic\n"
            "save_safetensors_atomic({'w': torch.ones(48_000_000)}, sys.argv[1]); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(5):  # the kill must land while safetensors writes its own temporary
        proc = subprocess.Popen([sys.executable, "-c", save, str(target)], cwd=ROOT, env=env)
        try:
            deadline, seen = time.monotonic() + 120, False
            while proc.poll() is None and time.monotonic() < deadline and not target.exists():
                if any(p.name.startswith(".tmp") for p in folder.rglob("*")):
                    proc.send_signal(signal.SIGKILL)
                    seen = True
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if seen and not target.exists():
            break
        for p in folder.iterdir():  # too late: the file was saved; try again
            subprocess.run(["rm", "-rf", str(p)])
    else:
        pytest.skip("the save always finished before the kill landed")
    left = list(folder.iterdir())
    assert left and all(re.fullmatch(r"\.a\.safetensors\.[0-9a-f]{12}\.tmp", p.name) for p in left), left
    assert any(p.name.startswith(".tmp") for p in folder.rglob("*"))  # safetensors' own copy, inside ours
    old = time.time() - 5
    for p in left:
        os.utime(p, (old, old))
    r = run_cli(*train_args(models, target, "--max-steps", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["a-run", "a.safetensors"]


def test_a_bare_safetensors_temporary_written_by_this_package_is_removed_by_the_next_run(models, tmp_path):
    from safetensors.torch import save_file

    ours, theirs = tmp_path / ".tmpAb12Cd", tmp_path / ".tmpZz99Yy"  # what safetensors named them before
    save_file({"w": torch.zeros(4)}, str(ours), metadata={"ipadapter_train.version": "0.1.0"})
    save_file({"w": torch.zeros(4)}, str(theirs), metadata={"format": "pt"})
    old = time.time() - 3600
    for p in (ours, theirs):
        os.utime(p, (old, old))
    r = run_cli(*train_args(models, tmp_path / "a.safetensors", "--max-steps", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert not ours.exists() and theirs.exists()
# ---------------------------------------------------------------- the same seed across processes (issue 17, item 11)

# What each process runs on: this CPU as it is, and with oneDNN and ATen kept to AVX2 (no AVX512, no native bf16
# kernels), the way a CPU without native bf16 runs them. Both variables are read when torch loads, so only a fresh
# process can test them.
WITHOUT_NATIVE_BF16 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def fp32_checkpoint(out: Path) -> dict[str, torch.Tensor]:
    """The run's last checkpoint, adapter and AdamW moments, in fp32: finer than the fp16 adapter file."""
    folder = out.with_name(out.stem + "-run") / "checkpoint"
    return {**tensors(folder / "adapter.safetensors"), **tensors(folder / "optimizer.safetensors")}


def assert_same_training(a: Path, b: Path) -> None:
    assert_bit_equal(a, b)
    first, second = fp32_checkpoint(a), fp32_checkpoint(b)
    assert first.keys() == second.keys()
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{len(differ)} of {len(first)} fp32 checkpoint tensors differ, e.g. {differ[0]}"


@pytest.mark.cli
@pytest.mark.parametrize("precision,env", [("no", {}), ("no", WITHOUT_NATIVE_BF16), ("bf16", {}),
                                           ("bf16", WITHOUT_NATIVE_BF16)],
                         ids=["fp32", "fp32-avx2", "bf16", "bf16-avx2"])
def test_two_processes_with_the_same_command_give_bit_equal_adapters(models, tmp_path, monkeypatch, precision, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # cli() passes this process's environment on
    outs = [tmp_path / "one" / "a.safetensors", tmp_path / "two" / "a.safetensors"]
    for out in outs:
        # 3 steps, a checkpoint after each: the last one holds the fp32 adapter and moments of step 3
        r = cli(*train_args(models, out, "--max-steps", "3", "--seed", "7", "--checkpoint-every", "1",
                            "--precision", precision))
        assert r.returncode == 0, r.stderr[-3000:]
    assert_same_training(*outs)


@pytest.mark.cli
def test_a_process_killed_after_a_checkpoint_and_resumed_in_another_equals_an_uninterrupted_process(models, tmp_path):
    """Every run in its own process: the uninterrupted one, the killed one (proc.kill(): SIGKILL on POSIX,
    TerminateProcess on Windows) and the resume."""
    steps = "24"
    plain = tmp_path / "plain" / "a.safetensors"
    r = cli(*train_args(models, plain, "--max-steps", steps, "--seed", "7", "--checkpoint-every", "2"))
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "killed" / "a.safetensors"
    args = train_args(models, out, "--max-steps", steps, "--seed", "7", "--checkpoint-every", "2")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    state = out.with_name("a-run") / "checkpoint" / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "ipadapter_train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.exists(), f"no checkpoint appeared; exit {proc.poll()}"
        proc.kill()
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 2 <= killed_at < int(steps) and not out.exists()

    r = cli(*args, "--resume", str(out.with_name("a-run")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out.with_name("a-run") / "report.json").read_text())["steps"] == int(steps)
    assert_same_training(plain, out)
