"""Previews of the Train node in-process (CPU, tiny random-weight SD1.5 at 64 px, the core's default sampling steps):

- `ComfyBackend.decode_latents` (the graph's own VAE) decodes as the diffusers back end does, and an
  encode -> decode round trip through it is the diffusers back end's round trip;
- the node's `previews` output is every grid of the run, the grids are the files the preview events name
  (under ComfyUI's output directory, for `/view`), and the runs route lists them;
- the progress bar and the phase events count a round's sampling steps ("previewing"), the ETA includes the
  rounds still to come, and a cancel during a round stops it at the next sampling step;
- with 5 images one is held out: it never reaches training (the encoded set) and the report names it; auto in
  a short run plans no round (over the budget) and the summary says why;
- a CLIP scorer scores every round, keep_best returns and saves the best-scored step's adapter, the figures
  of a random-weight scorer say so; keep_best without a scorer or with previews off is refused before any work.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_nodes_support import comfy_models, comfy_or_skip, diffusers_sd15, pack
from test_nodes_train import SAMPLES, events, output_dir, server, train  # noqa: F401 (fixtures)

pytestmark = pytest.mark.unit

comfy_or_skip()

import comfy.model_management  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402

PREVIEW_STEPS = pack("ipadapter_train.config").TrainConfig().preview_steps  # per preview image (the default)


@pytest.fixture(scope="module")
def graph():
    return comfy_models()


def photos(count: int) -> tuple[torch.Tensor, str]:
    """The first `count` sample photos at 64 px as an IMAGE batch, and their captions."""
    data, image_ops = pack("ipadapter_train.storage.data"), pack("ipadapter_train.storage.image_ops")
    samples, _ = data.load_image_folder(SAMPLES)
    assert len(samples) >= count
    pictures = [image_ops.center_crop(image_ops.resize_short_side(s.image, 64), 64) for s in samples[:count]]
    return pack("nodes.images").pils_to_tensor(pictures), "\n".join(s.caption for s in samples[:count])



@pytest.fixture
def bar():
    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, prompt_id=None, node_id=None: seen.append((value, total)))
    yield seen
    comfy.utils.set_progress_bar_global_hook(old)


def test_decode_latents_decodes_as_the_diffusers_backend_and_round_trips_as_it_does(graph):
    ours_backend = pack("nodes.comfy_backend")
    theirs = pack("ipadapter_train.diffusion.diffusers_backend").DiffusersBackend(diffusers_sd15())
    with torch.inference_mode(False):
        ours = ours_backend.ComfyBackend(graph["model"], graph["clip"], graph["vae"])
        pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
        latents = ours.encode_latents(pixels)[0]
        decoded = ours.decode_latents(latents)
        assert decoded.shape == (2, 3, 64, 64) and decoded.dtype == torch.float32 and decoded.device.type == "cpu"
        assert decoded.min() >= -1 and decoded.max() <= 1
        # ComfyUI's VAE clamps to [0, 1]; diffusers' does not: compare in the range both give
        torch.testing.assert_close(decoded, theirs.decode_latents(latents).clamp(-1, 1), atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(decoded, theirs.decode_latents(theirs.encode_latents(pixels)[0]).clamp(-1, 1),
                                   atol=2e-3, rtol=1e-3)


def grid_files(output: Path) -> list[Path]:
    return sorted(output.glob("ipadapter_train/*/previews/step_*.png"))


def test_previews_output_events_bar_and_runs_route(graph, server, bar, output_dir):
    runs = pack("nodes.runs")
    adapter, _, report, previews = train(graph, photos(3), steps=4, node="21", prompt="p-prev", validation="off",
                                         preview_every=2, preview_prompts="a cat\n\na dog\n")
    summary, full = report.split("\n\n", 1)
    rep = json.loads(full)["previews"]
    # 3 images: none held out, the first training image is the reference; 2 prompts (the empty line is skipped)
    assert rep["held_out"] == [] and rep["references"] == ["image_0000.png"]
    assert rep["prompts"] == ["a cat", "a dog"] and rep["sampling_steps"] == PREVIEW_STEPS and rep["size"] == 64
    assert rep["grids"] == ["previews/step_0002.png", "previews/step_0004.png"]
    assert "Previews: 2 grid(s)" in summary and "Preview references: image_0000.png." in summary

    # the output is every grid, oldest first, pixel for pixel the files the events name
    sent = [d for e, d, _ in server.sent if e == "ipadapter_train.preview"]
    assert [d["step"] for d in sent] == [2, 4]
    run_dir = Path(report.split("\n\n")[0].rsplit(": ", 1)[1])
    for d in sent:
        assert set(d) == {"node", "prompt_id", "workflow_id", "client_id", "started", "step", "filename",
                          "subfolder", "type"}
        assert (d["node"], d["prompt_id"], d["type"]) == ("21", "p-prev", "output")
        assert d["subfolder"] == f"ipadapter_train/{run_dir.name}/previews"
        assert d["filename"] == f"step_{d['step']:04d}.png"
    files = [output_dir / d["subfolder"] / d["filename"] for d in sent]
    assert files == grid_files(output_dir)
    assert previews.shape[0] == 2 and previews.dtype == torch.float32
    for i, path in enumerate(files):
        with Image.open(path) as grid:
            assert previews.shape[1:3] == (grid.height, grid.width)
            expected = np.asarray(grid.convert("RGB"), dtype=np.float32) / 255.0
        assert np.array_equal(previews[i].numpy(), expected)

    # the runs route keeps the list for a reloaded page
    listed = next(r for r in runs.snapshot()["runs"] if (r["prompt_id"], r["node"]) == ("p-prev", "21"))
    assert listed["previews"] == [{k: d[k] for k in ("step", "filename", "subfolder", "type")} for d in sent]

    # phases: nothing before the first step (the no-adapter images are made in the first round); a round after
    # step 2 (weights 0, 0.5 and 1: 3 renders, the first time) and after step 4 (0.5 and 1: 2 renders), each
    # counted in sampling steps on ComfyUI's bar
    timeline = [(d["phase"], d.get("step"), d["done"], d["total"])
                for kind, d in events(server, "ipadapter_train.phase") if d["phase"] != "encoding"]
    first, round_ = 3 * PREVIEW_STEPS, 2 * PREVIEW_STEPS
    assert timeline == ([("training", None, 0, 4)]
                        + [("previewing", 2, i, first) for i in range(1, first + 1)] + [("training", None, 2, 4)]
                        + [("previewing", 4, i, round_) for i in range(1, round_ + 1)])
    assert [(v, t) for v, t in bar if t in (first, round_)] == (
        [(i, first) for i in range(1, first + 1)] + [(i, round_) for i in range(1, round_ + 1)])
    # the ETA (its arithmetic: test_the_eta_counts_the_rounds_still_to_come): a figure from the first step on,
    # the planned rounds included, through the rounds, and nothing left at the last sampling step of the last round
    phases = [d for kind, d in events(server, "ipadapter_train.phase")]
    progress = [d for kind, d in events(server, "ipadapter_train.progress")]
    assert all(d["eta_seconds"] > 0 for d in progress[:3])
    previewing = [d for d in phases if d["phase"] == "previewing"]
    assert all(d["eta_seconds"] is not None for d in previewing if d["step"] == 2)
    assert previewing[-1]["eta_seconds"] == pytest.approx(0.0, abs=1e-9)
    assert [d["eta_seconds"] > 0 for d in phases if d["phase"] == "training" and d["done"] == 2] == [True]
    assert adapter.metadata["steps"] == "4"


def test_the_eta_counts_the_rounds_still_to_come():
    reporters, plans = pack("nodes.run_reporter"), pack("ipadapter_train.previews.rounds")
    config = pack("ipadapter_train.config").TrainConfig(resolution=64, preview_every=5, preview_steps=8)
    plan = plans.plan_preview_rounds(config, 12, 1, 64)  # the core's plan: the node copies no schedule
    assert [plan.rounds_between(done, 12) for done in (0, 4, 5, 9, 10, 11, 12)] == [3, 3, 2, 2, 1, 1, 0]
    assert plan.rounds_between(0, 10) == 2 and plan.due(12, 12) and not plan.due(11, 12)
    render = 8 + plans.DECODE_CALLS  # a render at the training size, 1 cell: 8 calls and the decode, in steps
    # from the first step on, before any round: the core's measured first step and its estimates
    reporter = reporters.RunReporter("1", "p-eta", total=12, images=1)
    reporter.preview_plan(plan.with_step_seconds(1.0))
    assert reporter._eta(1) == pytest.approx(11 * 1.0 + 3 * 2 * render + render)  # the first round's weight 0
    reporter._step_times.extend([1.0, 1.0])
    reporter._rounds_run = 1
    reporter._round_times.append(10.0)
    # after step 4: 8 steps and the rounds after 5, 10 and 12
    assert reporter._eta(4) == pytest.approx(8 * 1.0 + 3 * 10.0)
    # after step 5, its round not yet run: the same three rounds; once it ran, two
    assert reporter._eta(5) == pytest.approx(7 * 1.0 + 3 * 10.0)
    reporter._last_round_step = 5
    assert reporter._eta(5) == pytest.approx(7 * 1.0 + 2 * 10.0)


def test_cancel_during_a_preview_round_stops_it_at_the_next_sampling_step(graph, server):
    round_ = 3 * PREVIEW_STEPS  # the first round: the no-adapter images and weights 0.5 and 1
    seen = []

    def hook(value, total, preview, prompt_id=None, node_id=None):
        seen.append((value, total))
        if total == round_ and value == 3:  # the third sampling step of the round after step 2
            comfy.model_management.interrupt_current_processing(True)  # the Cancel button
        comfy.model_management.throw_exception_if_processing_interrupted()

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        adapter, _, report, previews = train(graph, photos(3), steps=6, node="22", preview_every=2)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    assert report.startswith("Partial adapter: cancelled after 2 of 6 steps.") and adapter.metadata["cancelled_at_step"] == "2"
    assert not comfy.model_management.processing_interrupted()
    assert seen[-1] == (3, round_)  # no sampling step after the cancel, no step 3, no validation
    phases = [(d["phase"], d["done"]) for e, d, _ in server.sent if e == "ipadapter_train.phase"]
    assert phases[-1] == ("previewing", 3) and "validating" not in [p for p, _ in phases]
    assert [d for e, d, _ in server.sent if e == "ipadapter_train.preview"] == []  # the round never finished
    assert [d["cancelled"] for e, d, _ in server.sent if e == "ipadapter_train.done"] == [True]
    assert previews.shape[0] == 1  # no grid: one picture that says the run stopped first


def test_a_held_out_image_never_reaches_training_and_the_report_names_it(graph, monkeypatch):
    trainer = pack("ipadapter_train.training.trainer")
    encoded = []
    original = trainer.encode_dataset

    def spy(samples, *args, **kwargs):
        encoded.append([str(s.path) for s in samples])
        return original(samples, *args, **kwargs)

    monkeypatch.setattr(trainer, "encode_dataset", spy)
    images, captions = photos(5)
    _, _, report, previews = train(graph, (images, captions), steps=2, node="23", validation="off",
                                   preview_every=0)  # auto
    rep = json.loads(report.split("\n\n", 1)[1])
    held = rep["previews"]["held_out"]
    names = [f"image_{i:04d}.png" for i in range(5)]
    assert len(held) == 1 and held[0] in names
    assert encoded == [[n for n in names if n not in held]]  # the training set, encoded once, without it
    assert rep["previews"]["references"] == held
    assert f"Held out of training for the previews: {held[0]}." in report.split("\n\n")[0]
    assert rep["previews"]["prompts"] == [captions.split("\n")[names.index(held[0])].strip()]  # its own caption
    # auto in a 2-step run with previews as large as its images: no round fits the budget, and the node says why
    schedule = rep["previews"]["schedule"]
    assert schedule["auto"] and schedule["rounds"] == 0 and rep["previews"]["grids"] == []
    assert f"Preview schedule: {schedule['why']}" in report.split("\n\n")[0] and "15%" in schedule["why"]
    assert previews.shape[0] == 1  # one small picture that says so


def test_held_out_previews_are_named_by_the_users_files(graph, monkeypatch, tmp_path):
    """Load Training Images' names output (its last) carries the file names to Train's image_names (its last
    input): the held-out image is named as the user's file (e.g. chelsea.jpg), not image_0001.png."""
    import shutil

    folder = tmp_path / "input" / "set"
    folder.mkdir(parents=True)
    for f in SAMPLES.iterdir():
        if f.suffix in (".jpg", ".txt"):
            shutil.copy(f, folder / f.name)
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    images, captions, _, names = pack("nodes.node_load_images").LoadTrainingImages.execute(
        folder="set", path="", prompt="").args
    files = sorted(f.name for f in folder.glob("*.jpg"))
    assert names.split("\n") == files
    _, _, report, _ = train(graph, (images, captions), steps=1, node="25", validation="off", preview_every=1,
                            image_names=names)
    rep = json.loads(report.split("\n\n", 1)[1])["previews"]
    assert len(rep["held_out"]) == 1 and rep["held_out"][0] in files and rep["references"] == rep["held_out"]
    assert f"Held out of training for the previews: {rep['held_out'][0]}." in report.split("\n\n")[0]


def test_image_names_that_do_not_fit_the_images_fall_back_to_numbered_names():
    """A names list of another length (another node's text) is not used: image_0000.png ... as before."""
    training = pack("nodes.training")
    assert training.image_names("a.jpg\nb.jpg\n", 2) == ["a.jpg", "b.jpg"]
    assert training.image_names("a.jpg\nb.jpg", 3) == ["image_0000.png", "image_0001.png", "image_0002.png"]
    assert training.image_names("a.jpg\na.jpg", 2) == ["image_0000.png", "image_0001.png"]
    assert training.image_names(None, 1) == ["image_0000.png"]


def test_preview_images_replace_the_held_out_ones(graph, monkeypatch):
    trainer = pack("ipadapter_train.training.trainer")
    encoded = []
    original = trainer.encode_dataset
    monkeypatch.setattr(trainer, "encode_dataset",
                        lambda samples, *a, **k: encoded.append(len(samples)) or original(samples, *a, **k))
    images, captions = photos(5)
    _, _, report, _ = train(graph, (images, captions), steps=1, node="24", validation="off", preview_every=1,
                            preview_images=images[:2])
    rep = json.loads(report.split("\n\n", 1)[1])["previews"]
    assert encoded == [5] and rep["held_out"] == []  # all five train
    assert rep["references"] == ["preview_0000.png", "preview_0001.png"] and rep["prompts"] == [""]  # image only


@pytest.fixture
def scorers(tmp_path, monkeypatch):
    """A tiny random-weight full CLIP in a temporary models/clip_scorers."""
    table = dict(folder_paths.folder_names_and_paths)
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", table)
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    folder = tmp_path / "clip_scorers"
    folder.mkdir()
    table["clip_scorers"] = ([str(folder)], {".safetensors"})
    clip_model = pack("ipadapter_train.models.clip_model")
    clip_model.save_clip(clip_model.build_clip("tiny"), folder / "tiny-clip.safetensors")
    return folder


def test_scored_previews_keep_the_best_step_with_the_score_nodes_cached_scorer(graph, server, scorers, monkeypatch):
    scoring, node_score = pack("ipadapter_train.scoring.scorer"), pack("nodes.node_score")
    loads = []
    original = scoring.Scorer.load.__func__
    monkeypatch.setattr(scoring.Scorer, "load", classmethod(lambda cls, path, *a, **k: loads.append(path) or
                                                            original(cls, path, *a, **k)))
    node_score._scorer.cache_clear()
    node = pack("nodes.node_train").TrainIPAdapter
    assert "tiny-clip.safetensors" in next(i for i in node.define_schema().inputs if i.id == "scorer").options

    adapter, _, report, previews = train(graph, photos(3), steps=2, node="25", validation="off", preview_every=1,
                                         scorer="tiny-clip.safetensors", keep_best=True)
    summary, full = report.split("\n\n", 1)
    rep = json.loads(full)
    run_dir = Path(rep["adapter"]).parent
    scores = json.loads((run_dir / "scores.json").read_text())
    best = max(scores["rounds"], key=lambda r: r["score"])["step"]
    assert rep["previews"]["best_step"] == best == rep["kept"]["step"] and scores["best_step"] == best
    # the node returns, and the run folder keeps, the best step's adapter; the last one beside it
    files = pack("ipadapter_train.adapter.fileformat")
    saved, meta = files.load_adapter(run_dir / "adapter.safetensors")
    assert meta["steps"] == str(best) == adapter.metadata["steps"] and meta["kept"] == "best"
    for key, value in adapter.state_dict().items():  # the file holds the weights at its own precision
        torch.testing.assert_close(value.to(saved[key].dtype), saved[key], atol=0, rtol=0)
    assert (run_dir / "adapter-last.safetensors").is_file()
    assert "Kept the best step's adapter" in summary and "random-weight figures" in summary
    # the events carry the scores, labelled as random-weight figures
    sent = [d for e, d, _ in server.sent if e == "ipadapter_train.preview"]
    assert [d["step"] for d in sent] == [1, 2] and previews.shape[0] == 2
    assert all(isinstance(d["score"], float) and d["grade"] and d["random_weights"] is True for d in sent)
    assert sent[-1]["best_step"] == best
    # the Score node's cache: one load for both nodes
    node_score._load(scorers / "tiny-clip.safetensors")
    assert len(loads) == 1


@pytest.mark.parametrize("settings,words", [
    ({"keep_best": True}, "keep_best needs scored previews: pick a CLIP model in scorer"),
    ({"keep_best": True, "scorer": "tiny-clip.safetensors", "preview_every": -1}, "preview_every is -1 (off)"),
])
def test_keep_best_without_scored_previews_is_refused_before_any_work(graph, output_dir, scorers, settings, words):
    errors = pack("ipadapter_train.errors")
    with pytest.raises(errors.IPAdapterError) as refused:
        train(graph, photos(3), **{"preview_every": 0, **settings})
    message = str(refused.value)
    assert words in message and message.endswith(".") and message.count(". ") == 0, message
    assert not (output_dir / "ipadapter_train").exists()  # no run started
