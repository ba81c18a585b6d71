"""Previews while training (issue 11) on micro random-weight models: the grid is deterministic, weight 0 is the
plain pipeline's image, grids change with training, held-out images never train, scores pick and keep the
best step, early stopping and resuming keep to the book, and everything scored says it is random-weight."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import SAMPLES, micro_clip, micro_sd15, micro_sdxl, run_cli, train_args
from ipadapter_train.training.adapter_init import build_adapter
from ipadapter_train.api import train_in_memory
from ipadapter_train.models.clip_features import CLIPFeatureEncoder
from ipadapter_train.models.clip_model import build_clip, save_clip
from ipadapter_train.config import TrainConfig
from ipadapter_train.storage.data import Sample, load_image_folder
from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend
from ipadapter_train.errors import IPAdapterError, TrainingCancelled
from ipadapter_train.scoring.generate import make_pipeline, make_scheduler
from ipadapter_train.previews.grid import MIN_CELL, line_height
from ipadapter_train.previews.runner import PreviewRunner
from ipadapter_train.previews.scores import ScoreBook
from ipadapter_train.previews.sources import PreviewSource, plan_previews
from ipadapter_train.scoring.scorer import Scorer
from ipadapter_train.training.plan import RunPaths, plan_run
from ipadapter_train.training.plan import RunHooks
from ipadapter_train.training.trainer import TrainingRun, train


def each_step(callback):
    """A progress hook that calls `callback(step, total, loss)` after every step (the run's TRAINING events)."""
    def progress(event):
        if event.phase == "training":
            callback(event.done, event.total, event.loss)
    return progress

pytestmark = pytest.mark.unit


def cfg(**kw) -> TrainConfig:
    base = dict(resolution=64, max_steps=4, checkpoint_every=0, mixed_precision="no", validation=False, seed=3,
                preview_every=2, preview_steps=2, learning_rate=5e-3)
    base.update(kw)
    return TrainConfig(**base)


def scorer() -> Scorer:
    return Scorer(build_clip("tiny", seed=1), name="tiny-clip")


def references(samples, n=1) -> list[Sample]:
    """Preview images given by the user: here the first samples again (the training set stays whole)."""
    return list(samples[:n])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_grid_is_deterministic_and_weight_0_and_1_are_the_diffusers_pipelines_images(samples):
    sd, clip = micro_sd15(), micro_clip()
    config = cfg().for_family(DiffusersBackend(sd).family)
    _, previews = plan_previews(samples, PreviewSource(references(samples), ["a cat"]), config)
    backend, encoder = DiffusersBackend(sd), CLIPFeatureEncoder(clip)
    previews.encode(backend, encoder)
    previews.render_baseline(backend)
    torch.manual_seed(0)
    adapter = build_adapter(backend, encoder, config)
    for p in adapter.parameters():  # a visible adapter, not the near-zero start
        p.data.normal_(0, 0.05)
    backend.attach(adapter)
    first = previews.render(backend, adapter)
    again = previews.render(backend, adapter)
    for weight in config.preview_weights:
        assert np.array_equal(pixels(first[weight][0]), pixels(again[weight][0])), weight
    assert not np.array_equal(pixels(first[0.0][0]), pixels(first[1.0][0]))

    # the same picture from diffusers' own pipeline with `generate`'s DPM-Solver++, the same starting noise
    pipe = make_pipeline(sd)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("dpm++", sd.scheduler_config)

    def pipeline_image(tokens) -> np.ndarray:
        backend.state.tokens, backend.state.scale = tokens, 1.0
        out = pipe(prompt="a cat", negative_prompt="", num_inference_steps=config.preview_steps,
                   guidance_scale=config.preview_guidance, latents=previews.noise[:1].clone(), height=64, width=64,
                   output_type="np").images[0]
        return np.round(out * 255).astype(np.int16)

    with torch.no_grad():
        cond = adapter.project(previews.features[:1])
        uncond = adapter.project(previews.dropped)
    assert np.abs(pipeline_image(torch.cat([uncond, cond])) - pixels(first[1.0][0])).max() <= 2
    backend.detach()
    assert np.abs(pipeline_image(None) - pixels(first[0.0][0])).max() <= 2  # the UNet without any adapter


def grid_cell(path, row: int, column: int) -> np.ndarray:
    """One picture of a saved grid (cells are MIN_CELL wide for 64 px previews)."""
    grid = pixels(Image.open(path))
    line = line_height(grid.shape[1])
    top = 2 * line + row * (MIN_CELL + line) + line
    return grid[top:top + MIN_CELL, column * MIN_CELL:(column + 1) * MIN_CELL]


def test_grids_change_with_training_but_not_their_weight_0_column(tmp_path, samples):
    result = train_in_memory(samples, micro_sd15(), micro_clip(), cfg(learning_rate=5e-2), tmp_path / "run",
                             tmp_path / "a.safetensors")
    grids = [tmp_path / "run" / g for g in result.report["previews"]["grids"]]
    assert [g.name for g in grids] == ["step_0002.png", "step_0004.png"]
    assert np.array_equal(grid_cell(grids[0], 0, 0), grid_cell(grids[1], 0, 0))  # the reference
    assert np.array_equal(grid_cell(grids[0], 0, 1), grid_cell(grids[1], 0, 1))  # weight 0: no adapter
    assert not np.array_equal(grid_cell(grids[0], 0, 3), grid_cell(grids[1], 0, 3))  # weight 1: trained further
    page = (tmp_path / "run" / "previews.html").read_text()
    assert "step_0002.png" in page and "step_0004.png" in page and "loss.png" in page
    assert "Random-weight models" in page


def test_held_out_images_never_reach_training_and_the_report_names_them(tmp_path, samples):
    backend, encoder = DiffusersBackend(micro_sd15()), CLIPFeatureEncoder(micro_clip())
    plan = plan_run(cfg(max_steps=1), samples, backend.family,
                    paths=RunPaths(tmp_path / "run", tmp_path / "a.safetensors"))
    (held,) = plan.previews.references
    assert plan.held_out == [str(held.path)]
    assert len(plan.samples) == len(samples) - 1 and held not in plan.samples
    run = TrainingRun(backend, encoder, plan)
    run.set_up()
    own = encoder.encode([held.image], "base")[0]
    assert len(run.data) == len(samples) - 1
    assert all(not torch.allclose(row, own) for row in run.data.features)  # what training reads
    assert held.caption not in run.data.captions or sum(s.caption == held.caption for s in samples) > 1
    run.run_steps()
    run.finish()
    report = run.report().report
    assert report["previews"]["held_out"] == [str(held.path)] == report["previews"]["references"]

    few = samples[:4]  # below 5 images none is held out: the previews use a training image, and say so
    plan = plan_run(cfg(), few, backend.family, paths=RunPaths(tmp_path / "run4"))
    assert plan.samples == list(few) and plan.previews.held_out == [] and plan.previews.references == [few[0]]
    ten = samples * 2
    ten = [Sample(s.path.with_name(f"{i}_{s.path.name}"), s.image, s.caption) for i, s in enumerate(ten)]
    assert len(plan_run(cfg(), ten, backend.family, paths=RunPaths(tmp_path / "run10")).previews.held_out) == 2


def test_keep_best_writes_the_step_scores_json_ranks_first(tmp_path, samples):
    refs = PreviewSource(references(samples), ["a photo"], scorer())
    run = train_in_memory(samples, micro_sd15(), micro_clip(), cfg(max_steps=6, keep="best"), tmp_path / "run",
                          tmp_path / "best.safetensors", previews=refs)
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    ranked = max(scores["rounds"], key=lambda r: (r["score"], -r["step"]))
    assert scores["best_step"] == ranked["step"] == run.report["kept"]["step"]
    assert f"Step {ranked['step']} scored best" in scores["why"]
    # the adapter of that step, trained again without previews, and the last step's
    plain = {n: train_in_memory(samples, micro_sd15(), micro_clip(), cfg(max_steps=n, preview_every=0),
                                tmp_path / f"run{n}", tmp_path / f"plain{n}.safetensors").out_path
             for n in {ranked["step"], 6}}
    for kept, reference in ((tmp_path / "best.safetensors", plain[ranked["step"]]),
                            (tmp_path / "best-last.safetensors", plain[6])):
        a, b = load_file(kept), load_file(reference)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kept


def test_the_book_ranks_stops_and_rewinds():
    book = ScoreBook("s")
    assert book.best is None and book.why() is None
    for step, score in ((2, 50.0), (4, 61.0), (6, 61.0), (8, 55.0)):
        book.add(step, f"g{step}", score, [])
    assert book.best["step"] == 4  # the earlier of two equal scores
    assert book.rounds_without_improvement() == 2
    assert book.until(5).rounds_without_improvement() == 0 and book.until(5).best["step"] == 4
    runner = PreviewRunner.__new__(PreviewRunner)
    runner.book, runner.config = book, cfg(early_stop=2, keep="last")
    assert "2 scored preview round(s) since the best one (step 4)" in runner.stop_reason()
    runner.config = cfg(early_stop=3)
    assert runner.stop_reason() is None


def test_early_stop_ends_the_run_at_the_round_the_book_says(tmp_path, samples):
    config = cfg(max_steps=12, preview_every=1, preview_steps=2, early_stop=1, learning_rate=5e-2)
    run = train_in_memory(samples, micro_sd15(), micro_clip(), config, tmp_path / "run", tmp_path / "a.safetensors",
                          previews=PreviewSource(references(samples), ["a photo"], scorer()))
    rounds = sorted(json.loads((tmp_path / "run" / "scores.json").read_text())["rounds"], key=lambda r: r["step"])
    # replay the book: the run must end exactly at the first round one round past the best
    book, expected = ScoreBook("replay"), None
    for r in rounds:
        book.add(r["step"], r["grid"], r["score"], [])
        if book.rounds_without_improvement() >= 1:
            expected = r["step"]
            break
    assert expected is not None, "the scores rose at every round: no early stop to check"
    assert run.steps_done == expected == rounds[-1]["step"] and run.report["stopped_early"].startswith("stopped early")


def test_a_resumed_run_keeps_its_best_so_far(tmp_path, samples):
    source = PreviewSource(references(samples), ["a photo"], scorer())

    def cancel_at_5(step, total, loss):
        if step == 5:
            raise TrainingCancelled()

    config = cfg(max_steps=8, checkpoint_every=2, keep="best")
    first = train_in_memory(samples, micro_sd15(), micro_clip(), config, tmp_path / "run", tmp_path / "a.safetensors",
                            previews=source, progress=each_step(cancel_at_5))
    assert first.cancelled and first.steps_done == 5
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    best_before = state["previews"]["book"]["best_step"]
    assert best_before in (2, 4) and (tmp_path / "run" / "checkpoint" / "best.safetensors").is_file()
    # resumed with no step left to train: the output is the best of the rounds before the cancel
    resumed = train_in_memory(samples, micro_sd15(), micro_clip(), cfg(max_steps=5, checkpoint_every=2, keep="best"),
                              tmp_path / "run", tmp_path / "a.safetensors", previews=source, resume=tmp_path / "run")
    assert resumed.report["kept"]["step"] == best_before
    reference = train_in_memory(samples, micro_sd15(), micro_clip(), cfg(max_steps=best_before, preview_every=0),
                                tmp_path / "ref", tmp_path / "ref.safetensors").out_path
    a, b = load_file(tmp_path / "a.safetensors"), load_file(reference)
    assert all(torch.equal(a[k], b[k]) for k in b)

    # and resumed to the end, it ends as a run that never stopped
    train_in_memory(samples, micro_sd15(), micro_clip(), config, tmp_path / "run", tmp_path / "a.safetensors",
                    previews=source, resume=tmp_path / "run")
    whole = train_in_memory(samples, micro_sd15(), micro_clip(), config, tmp_path / "whole",
                            tmp_path / "whole.safetensors", previews=source)
    a, b = load_file(tmp_path / "a.safetensors"), load_file(whole.out_path)
    assert all(torch.equal(a[k], b[k]) for k in b)
    scores = [json.loads((tmp_path / d / "scores.json").read_text())["rounds"] for d in ("run", "whole")]
    assert [(r["step"], r["score"]) for r in scores[0]] == [(r["step"], r["score"]) for r in scores[1]]


def test_sdxl_previews_render_with_pooled_text_and_size_conditioning(samples):
    sd = micro_sdxl()
    backend, encoder = DiffusersBackend(sd), CLIPFeatureEncoder(micro_clip())
    config = cfg().for_family(backend.family)
    _, previews = plan_previews(samples, PreviewSource(references(samples, 2), ["a cat", "a dog"]), config)
    previews.encode(backend, encoder)
    assert previews.pooled.shape[0] == 2 and previews.time_ids.tolist() == [64, 64, 0, 0, 64, 64]
    previews.render_baseline(backend)
    adapter = build_adapter(backend, encoder, config)
    backend.attach(adapter)
    images = previews.render(backend, adapter)
    assert len(previews.cells) == 4 and all(len(images[w]) == 4 for w in config.preview_weights)
    assert images[1.0][0].size == (64, 64)


def test_the_cli_previews_scores_keeps_the_best_and_labels_random_figures(models, tmp_path):
    clip = tmp_path / "clip.safetensors"
    save_clip(build_clip("tiny", seed=1), clip)
    out = tmp_path / "a.safetensors"
    r = run_cli(*train_args(models, out, "--max-steps", "4", "--preview-every", "2", "--preview-steps", "2",
                            "--clip", str(clip), "--keep", "best"))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "a-run"
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["step_0002.png", "step_0004.png"]
    scores = json.loads((run / "scores.json").read_text())
    assert scores["random_weights"] is True and "Random-weight figures" in scores["note"]
    assert out.is_file() and (tmp_path / "a-last.safetensors").is_file()
    assert "held out of training: " in r.stdout and "scored best" in r.stdout and "random-weight" in r.stdout
    assert "Random-weight" in (run / "previews.html").read_text()
    report = json.loads((run / "report.json").read_text())
    assert len(report["previews"]["held_out"]) == 1 and report["dataset"]["used"]

    # scoring decisions without a scorer, or without previews, are refused in one sentence before any work
    for extra in (["--keep", "best"], ["--early-stop", "2", "--preview-every", "0"]):
        r = run_cli(*train_args(models, tmp_path / "b.safetensors", "--preview-every", "2", *extra))
        assert r.returncode != 0 and "--clip" in r.stderr, (extra, r.stderr)
        assert not (tmp_path / "b.safetensors").exists()


def test_bad_preview_settings_are_one_sentence(tmp_path, samples):
    for fields, words in (({"preview_every": -1}, "preview_every"), ({"preview_size": 60}, "Preview size 60"),
                          ({"preview_weights": ()}, "Preview weights"), ({"keep": "first"}, "keep must be")):
        with pytest.raises(IPAdapterError, match=words):
            cfg(**fields).validate()
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    with pytest.raises(IPAdapterError, match="no prompt"):
        from ipadapter_train.cli.training import _preview_source
        import argparse

        _preview_source(argparse.Namespace(preview_images=None, preview_prompts=str(empty), clip=None))
    assert load_image_folder(SAMPLES)[0]  # the sample folder the CLI tests use is intact


def test_a_cancel_during_a_preview_round_stops_at_once_and_keeps_the_adapter(tmp_path, samples):
    calls = []
    steps = cfg().preview_steps

    def cancel_in_the_second_render(event):
        if event.phase != "previewing":
            return
        calls.append((event.done, event.total))
        if event.done > steps:  # the weight-0 images (first in step 2's round) made `steps` calls; the next one
            raise TrainingCancelled()

    result = train_in_memory(samples, micro_sd15(), micro_clip(), cfg(max_steps=6), tmp_path / "run",
                             tmp_path / "a.safetensors", progress=cancel_in_the_second_render)
    assert result.cancelled and result.steps_done == 2
    # the round counts its sampling steps over all its renders: weights 0, 0.5 and 1 the first time
    assert calls == [(i, 3 * steps) for i in range(1, steps + 2)]  # not one sampling step more
    assert not (tmp_path / "run" / "previews" / "step_0002.png").exists()
    assert load_file(tmp_path / "a.safetensors") and (tmp_path / "run" / "checkpoint" / "state.json").is_file()


# ------------------------------------------------------------------ the schedule of "auto" (issue 17, item 3)

def plan_for(total, side, preview_side, validation_calls=0, every="auto", **kw):
    from ipadapter_train.previews.rounds import plan_preview_rounds

    config = TrainConfig(resolution=side, preview_every=every, **kw)
    return plan_preview_rounds(config, total, 1, preview_side, validation_calls)


def test_auto_keeps_a_short_slow_run_within_the_budget_and_a_long_run_at_thirds():
    from ipadapter_train.previews.rounds import PREVIEW_BUDGET

    # the run: 12 steps at 128 px, previews as large as the training images: one round costs more than
    # the budget of the whole run, so auto plans none and says why (the step time is only the unit)
    short = plan_for(12, 128, 128, validation_calls=8).with_step_seconds(21.0)
    assert short.rounds == 0 and short.every == 0 and not short.due(12, 12)
    assert "no preview round" in short.why and "15%" in short.why and "--preview-every" in short.why
    assert short.seconds_left(1, 12, 0) == 0.0
    # a longer run at that size affords fewer rounds than three, and stays within the budget
    medium = plan_for(150, 128, 128, validation_calls=8)
    assert 1 <= medium.rounds < 3 and medium.share <= PREVIEW_BUDGET and "not 3" in medium.why
    assert medium.due(150, 150) and medium.rounds == 2
    # the kit's default job (40 steps at 512 px, previews at 256, 16 validation calls) and a long run: thirds
    kit = plan_for(40, 512, 256, validation_calls=16)
    assert (kit.rounds, kit.every) == (3, 14) and kit.share <= PREVIEW_BUDGET
    assert [s for s in range(1, 41) if kit.due(s, 40)] == [14, 28, 40]
    long = plan_for(300, 512, 256)
    assert (long.rounds, long.every) == (3, 100)
    # a number of steps is kept as given, with its share reported
    given = plan_for(12, 128, 128, every=4)
    assert (given.rounds, given.every, given.auto) == (3, 4, False) and given.share > PREVIEW_BUDGET
    assert "every 4 steps as set" in given.why


def test_the_planned_rounds_cost_follows_the_sizes_and_the_first_round_makes_the_weight_0_images():
    plan = plan_for(40, 512, 256, validation_calls=16).with_step_seconds(2.0)
    # a call over 1 cell at 256 px is a quarter of a step at 512 px; 5 sampling steps and half a call's decode
    assert plan.round_steps == pytest.approx(2 * 0.25 * 5.5) and plan.baseline_steps == pytest.approx(0.25 * 5.5)
    assert plan.renders(first=True) == 3 and plan.renders(first=False) == 2
    # before any round: three rounds and the weight-0 images; after the first, two rounds, or measured ones
    assert plan.seconds_left(1, 40, 0) == pytest.approx(2.0 * (3 * 2.75 + 1.375))
    assert plan.seconds_left(14, 40, 1) == pytest.approx(2.0 * 2 * 2.75)
    assert plan.seconds_left(14, 40, 1, round_seconds=10.0) == pytest.approx(20.0)
    assert plan.seconds_left(14, 40, 0, round_pending=True) == pytest.approx(2.0 * (3 * 2.75 + 1.375))


def test_preview_size_follows_a_128_px_training_size(samples):
    backend = DiffusersBackend(micro_sd15())
    config = cfg(resolution=128).for_family(backend.family)
    _, previews = plan_previews(samples, PreviewSource(references(samples), ["a cat"]), config)
    assert backend.family.default_resolution // 2 > 128  # the family's default preview size would be larger
    assert previews.size(backend.family) == 128 and previews.size(backend.family) % 8 == 0  # whole latents


def test_the_eta_counts_the_planned_rounds_from_the_first_step():
    from ipadapter_train.cli.progress import RunEta

    now = [0.0]
    eta = RunEta(clock=lambda: now[0])
    # the trainer's plan, with its first step measured
    plan = plan_for(40, 512, 256, validation_calls=16).with_step_seconds(2.0)
    eta.set_plan(plan)
    now[0] = 2.0
    eta.step(1)
    # one step measured: 39 steps and the three rounds with the weight-0 images, before any round ran
    assert eta.seconds(1, 40) == pytest.approx(39 * 2.0 + 2.0 * (3 * 2.75 + 1.375))
    for step in range(2, 15):
        now[0] += 2.0
        eta.step(step)
    assert eta.seconds(14, 40) == pytest.approx(26 * 2.0 + 2.0 * (3 * 2.75 + 1.375))  # step 14's round is due
    now[0] += 8.0
    eta.round_done(14)
    assert eta.seconds(14, 40) == pytest.approx(26 * 2.0 + 2.0 * 2 * 2.75)
    now[0] += 2.0
    eta.step(15)  # the round is not counted in the step's time
    assert eta.seconds(15, 40) == pytest.approx(25 * 2.0 + 2.0 * 2 * 2.75)


def test_the_plan_has_the_schedule_before_training_and_the_events_the_first_step_time(tmp_path, samples):
    backend, encoder = DiffusersBackend(micro_sd15()), CLIPFeatureEncoder(micro_clip())
    plan = plan_run(cfg(max_steps=2, preview_every="auto"), samples, backend.family, paths=RunPaths(tmp_path / "run"))
    assert plan.rounds is not None and plan.rounds.step_seconds is None  # decided before any model work
    events = []
    result = train(plan, backend, encoder, RunHooks(progress=events.append))
    steps = [e for e in events if e.phase == "training"]
    assert [e.done for e in steps] == [1, 2]
    assert steps[0].schedule.step_seconds > 0  # the first step's event already has the measured step time
    schedule = result.report["previews"]["schedule"]
    assert schedule["rounds"] == plan.rounds.rounds and schedule["why"] == plan.rounds.why


def test_a_short_cli_run_with_auto_previews_reports_the_schedule(models, tmp_path):
    # 2 steps with previews as large as the training images: auto renders no round, and says why
    out = tmp_path / "a.safetensors"
    r = run_cli(*train_args(models, out, "--max-steps", "2", "--preview-every", "auto", "--preview-steps", "2"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "a-run" / "report.json").read_text())
    schedule = report["previews"]["schedule"]
    assert schedule["auto"] and schedule["rounds"] == 0 and report["previews"]["grids"] == []
    assert "preview schedule: auto: no preview round" in r.stdout
    assert not (tmp_path / "a-run" / "previews").exists() and not (tmp_path / "a-run" / "previews.html").exists()
    # 12 steps with small previews: the final round fits the budget, and the report says so
    out = tmp_path / "b.safetensors"
    r = run_cli(*train_args(models, out, "--max-steps", "12", "--preview-every", "auto", "--preview-steps", "2",
                            "--resolution", "128", "--preview-size", "64"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "b-run" / "report.json").read_text())
    schedule = report["previews"]["schedule"]
    assert (schedule["rounds"], schedule["every"]) == (1, 12) and schedule["share"] <= schedule["budget"]
    assert report["previews"]["grids"] == ["previews/step_0012.png"] and report["previews"]["size"] == 64
    assert "preview schedule: auto: 1 round(s), not 3" in r.stdout
@pytest.mark.parametrize("size", [64, 512])  # SD1.5 previews at 64 px (128 px cells), SDXL's at 512 (256 px cells)
def test_grid_labels_are_readable_where_the_train_node_shows_the_grid(size):
    """The node shows the grid about SHOWN_WIDTH (340) px wide: the title's letters are at least 9 px high there
    (Pillow's fixed font gave 6.6 px at 64 px previews and 3.3 px at 512 px)."""
    from ipadapter_train.previews.grid import SHOWN_WIDTH, compose_grid, line_height

    image = Image.new("RGB", (size, size), (0, 0, 255))
    grid = compose_grid("Step 12 preview", [image], ["chelsea.jpg: a photo"], [0, 0.5, 1], [[image]] * 3)
    ink = np.where((np.asarray(grid.convert("L"))[:line_height(grid.width)] < 128).any(axis=1))[0]
    assert (ink.max() - ink.min() + 1) * SHOWN_WIDTH / grid.width >= 9
