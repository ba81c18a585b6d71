"""The Search node's own logic in-process, without training: its ranges become the core's search space (equal ends,
one batch size or a chosen variant fix a setting), bad ranges are refused in one sentence when queued, and around
the core's real Optuna study (trials stood in for by a fake `train_in_graph` that reports one preview round and
writes a small adapter): the best trial's adapter is read back from its file, the node's table of trials is sent,
and a cancel after a finished trial returns that trial's adapter (one in the first trial fails in one sentence). A
real in-graph run (the in-process test graph) checks how a trial's run ends when the search's hook prunes it.

test_server_search.py runs real trials in a real server."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from test_nodes_support import ROOT, comfy_models, comfy_or_skip, pack, random_adapter

pytestmark = pytest.mark.unit

comfy_or_skip()

import folder_paths  # noqa: E402


@pytest.fixture(autouse=True)
def output_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    return tmp_path / "output"


@pytest.fixture
def sent(monkeypatch):
    """What the node sends to the pages (runs.PromptServer stood in for)."""
    runs = pack("nodes.runs")
    messages = []
    server = SimpleNamespace(send_sync=lambda event, data, sid=None: messages.append((event, data)))
    monkeypatch.setattr(runs, "PromptServer", type("PromptServer", (), {"instance": server}))
    return messages


def search_module():
    return pack("nodes.search")


def test_the_ranges_become_the_search_space_and_equal_ends_fix_a_setting():
    search = search_module()
    space = search.search_space(100, 400, 1e-5, 1e-3, "search", "1, 2")
    by_name = {s.name: s for s in space.settings}
    assert (by_name["max_steps"].low, by_name["max_steps"].high) == (100, 400)
    assert (by_name["learning_rate"].low, by_name["learning_rate"].high, by_name["learning_rate"].log) == (1e-5, 1e-3,
                                                                                                          True)
    assert by_name["variant"].choices == ("base", "plus") and by_name["batch_size"].choices == (1, 2)
    fixed = {s.name: s for s in search.search_space(50, 50, 1e-4, 1e-4, "plus", "2").settings}
    assert [fixed[n].value for n in ("max_steps", "learning_rate", "variant", "batch_size")] == [50, 1e-4, "plus", 2]
    assert all(fixed[n].fixed for n in ("max_steps", "learning_rate", "variant", "batch_size"))
    assert "drop" in search.search_space(1, 2, 1e-5, 1e-3, "base", "1").searched()  # the core's default range


@pytest.mark.parametrize("inputs, words", [
    ({"steps_low": 400, "steps_high": 100}, "steps_low (400) is above steps_high (100)"),
    ({"learning_rate_low": 1e-2, "learning_rate_high": 1e-4}, "learning_rate_low (0.01) is above"),
    ({"batch_sizes": "1, two"}, "batch_sizes '1, two' is not usable"),
    ({"batch_sizes": "0"}, "whole numbers from 1 to 64"),
    ({"resolution": 60}, "Resolution 60 is not usable"),
])
def test_bad_ranges_are_refused_in_one_sentence_when_queued(inputs, words):
    node = pack("nodes.node_search").SearchIPAdapterSettings
    verdict = node.validate_inputs(**inputs)
    assert isinstance(verdict, str) and words in verdict and verdict.count(". ") == 0, verdict
    assert node.validate_inputs(steps_low=100, steps_high=100, batch_sizes="1,2,4") is True


def fake_trials(monkeypatch, plan: list[str]):
    """Stand in for `train_in_graph`: trial k (in order) does what plan[k] says: "finish" (a round with a held-out loss
    of 1/(k+1), an adapter file), "cancel" (the user's cancel: a cancelled result)."""
    search = search_module()
    core = pack("ipadapter_train.api")
    layout = pack("ipadapter_train.layout")
    fileformat = pack("ipadapter_train.adapter.fileformat")
    layers = layout.adapter_layers(pack("ipadapter_train.models.sd15").tiny_unet_config())
    calls = []

    def train_in_graph(model, clip, vae, clip_vision, samples, config, node_id, prompt_id, init_adapter, workflow_id,
                       client_id, previews, random_weights=False, run_dir=None, adapter_out=None, hook=None,
                       trial=None):
        k = len(calls)
        calls.append(SimpleNamespace(config=config, run_dir=run_dir, adapter_out=adapter_out, trial=trial,
                                     previews=previews))
        run_dir.mkdir(parents=True, exist_ok=True)
        if plan[k] == "cancel":
            return None, SimpleNamespace(report={}, run_dir=run_dir, steps_done=1, cancelled=True)
        loss = 1.0 / (k + 1)
        hook(core.RunEvent(core.PREVIEWED, 1, 1, step=2, round={"step": 2, "heldout_loss": loss}))
        adapter = random_adapter("base", 32, layers, seed=k + 1)
        fileformat.save_adapter(adapter.state_dict(), adapter_out, {"trial": str(k)})
        return adapter, SimpleNamespace(report={"previews": {"heldout_loss": loss}}, run_dir=run_dir, steps_done=2,
                                        cancelled=False)

    monkeypatch.setattr(search, "train_in_graph", train_in_graph)
    return calls


def run(trials: int, **kwargs):
    search = search_module()
    core = pack("ipadapter_train.api")
    space = search.search_space(2, 4, 1e-5, 1e-3, "base", "1")
    base = core.TrainConfig(resolution=64, seed=5, preview_every=2, validation=False, max_steps=2)
    source = core.PreviewSource(heldout_loss=True)
    return search.search_in_graph(None, None, None, None, [], base, space, trials, source, "7", "p-1", "wf-1", None,
                                  **kwargs)


def test_the_best_trial_s_adapter_comes_back_from_its_file_and_the_table_follows_the_trials(monkeypatch, sent,
                                                                                          output_dir):
    calls = fake_trials(monkeypatch, ["finish", "finish"])
    adapter, rows, objective, folder, stopped = run(2)
    assert stopped is None and objective.name == "held-out validation loss"
    # each trial trained into its own folder inside the search folder, under ComfyUI's output directory
    assert folder.parent == output_dir / "ipadapter_train"
    assert folder.name.startswith("search-") and folder.name.endswith("node7")
    assert [c.run_dir for c in calls] == [folder / "trial_000", folder / "trial_001"]
    assert [c.trial["index"] for c in calls] == [1, 2] and all(c.trial["trials"] == 2 for c in calls)
    assert all(c.previews.heldout_loss for c in calls)
    # the lower held-out loss wins: trial 1 (0.5 against 1.0); its file, not an in-memory copy, is returned
    assert [r.state for r in rows] == ["finished", "finished"] and adapter.metadata["trial"] == "1"
    want = pack("ipadapter_train.adapter.fileformat").load_adapter(folder / "trial_001.safetensors")[0]
    assert all(torch.equal(adapter.state_dict()[k], want[k].float()) for k in want)
    assert (folder / "search.html").is_file()
    tables = [d for e, d in sent if e == "ipadapter_train.search"]
    assert [r["state"] for r in tables[0]["rows"]] == ["running"]  # sent as the first trial starts
    assert tables[-1]["done"] and tables[-1]["best"]["number"] == 1 and tables[-1]["workflow_id"] == "wf-1"
    assert [r["best"] for r in tables[-1]["rows"]] == [False, True]
    report = search_module().report_text(rows, objective, folder, 2, stopped, False)
    assert "Searched 2 trial(s) by the held-out validation loss: 2 finished, 0 pruned." in report
    assert "Best: trial 1, 0.5000: lr " in report and str(folder) in report.split("\n\n")[0]


def test_a_cancel_after_a_finished_trial_returns_that_trial_s_adapter(monkeypatch, sent):
    runs = pack("nodes.runs")
    stopped_before = runs.stopped_runs("7")
    fake_trials(monkeypatch, ["finish", "cancel", "finish"])
    adapter, rows, objective, folder, stopped = run(3)
    assert stopped == "cancelled during trial 2 of 3"
    assert adapter.metadata["trial"] == "0" and [r.state for r in rows] == ["finished", "failed"]
    assert runs.stopped_runs("7") == stopped_before + 1  # the next Run searches afresh
    last = [d for e, d in sent if e == "ipadapter_train.search"][-1]
    assert last["done"] and last["note"] == stopped
    report = search_module().report_text(rows, objective, folder, 3, stopped, False)
    assert report.startswith("Search cancelled during trial 2 of 3: the adapter is the best finished trial's.")


def test_a_cancel_in_the_first_trial_fails_in_one_sentence(monkeypatch, sent):
    fake_trials(monkeypatch, ["cancel"])
    errors = pack("ipadapter_train.errors")
    with pytest.raises(errors.IPAdapterError, match=r"^The search was cancelled during trial 1 of 2, before any "
                                                    r"trial finished: there is no adapter to return\.$"):
        run(2)


def test_the_table_image_has_a_row_per_trial():
    core_table = pack("ipadapter_train.search.table_image")
    trials = pack("ipadapter_train.search.trials")
    objective = pack("ipadapter_train.search.objective")
    rows = [trials.TrialRow(n, state, {"learning_rate": 1e-4 * (n + 1), "variant": "base"}, value, 2, 1.5, None,
                            None, None) for n, state, value in ((0, "finished", 50.0), (1, "pruned", None))]
    one, two = (core_table.table_image(rows[:k], objective.SCORE) for k in (1, 2))
    assert two.height - one.height == core_table.LINE and one.width > 200
    heads, cells = core_table.table_rows(rows, objective.SCORE)
    assert heads == ["trial", "state", "learning_rate", "variant", "score (%)", "steps", "seconds"]
    assert cells[0] == ["0", "finished", "1.0e-04", "base", "50.0", "2", "1.5"] and cells[1][4] == "-"


def test_a_trial_stopped_by_the_search_s_hook_is_pruned_not_a_stopped_run_of_the_node(sent, output_dir):
    """train_in_graph as a trial runs it: into the given folder and file, the search's hook after the node's own,
    every event naming the trial; a TrainingCancelled from the hook ends the run as "pruned after step N"."""
    core, runs, training = pack("ipadapter_train.api"), pack("nodes.runs"), pack("nodes.training")
    data, image_ops = pack("ipadapter_train.storage.data"), pack("ipadapter_train.storage.image_ops")
    photos = data.load_image_folder(ROOT / "ipadapter_train" / "assets" / "samples")[0][:2]
    samples = [core.Sample(path=s.path, image=image_ops.center_crop(image_ops.resize_short_side(s.image, 64), 64),
                           caption=s.caption) for s in photos]
    seen = []

    def hook(event):
        seen.append(event.phase)
        if event.phase == core.TRAINING and event.done == 1:
            raise core.TrainingCancelled()

    graph = comfy_models()
    run_dir = output_dir / "ipadapter_train" / "search-x" / "trial_003"
    stopped_before = runs.stopped_runs("7")
    with torch.inference_mode():
        _, result = training.train_in_graph(
            graph["model"], graph["clip"], graph["vae"], graph["clip_vision"], samples,
            core.TrainConfig(resolution=64, max_steps=5, preview_every=0, validation=False), "7", "p-9",
            run_dir=run_dir, adapter_out=run_dir.with_suffix(".safetensors"), hook=hook,
            trial={"number": 3, "index": 2, "trials": 4})
    assert result.cancelled and result.steps_done == 1 and run_dir.with_suffix(".safetensors").is_file()
    assert seen[0] == core.ENCODING and seen[-1] == core.TRAINING  # every event, after the node's own reporter
    done = [d for e, d in sent if e == "ipadapter_train.done"][-1]
    assert done["note"] == "pruned after step 1" and done["cancelled"]
    trial = {"number": 3, "index": 2, "trials": 4}
    assert all(d["trial"] == trial for e, d in sent if e.startswith("ipadapter_train."))
    assert runs.stopped_runs("7") == stopped_before  # a pruned trial is the search's business, not a stopped run
