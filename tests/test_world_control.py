"""The shuffled-embedding control (world/control.py), the learned world's deliberately broken training step: each
picture is trained with a randomly drawn picture's image embedding. Here on the micro models: what it changes in a
batch, that the trainer applies it, and that a control's adapter and report say they are one."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from conftest import micro_clip, micro_sd15
from ipadapter_train.api import train_in_memory
from ipadapter_train.adapter.fileformat import inspect_adapter
from ipadapter_train.config import TrainConfig
from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.models.clip_features import CLIPFeatureEncoder
from ipadapter_train.training.batches import make_batch
from ipadapter_train.training.encoding import encode_dataset
from ipadapter_train.world.control import SHUFFLED_EMBEDDINGS, shuffle_embeddings

pytestmark = pytest.mark.unit

CONFIG = TrainConfig(resolution=64, max_steps=4, batch_size=2, mixed_precision="no", validation=False, seed=3,
                     checkpoint_every=0, drop_text=0.0, drop_image=0.3, drop_both=0.0)


@pytest.fixture
def data(samples):
    backend = DiffusersBackend(micro_sd15())
    return backend, encode_dataset(samples, backend, CLIPFeatureEncoder(micro_clip()), CONFIG)


def row_of(features: torch.Tensor, row: torch.Tensor) -> int | None:
    hits = [i for i in range(len(features)) if torch.equal(features[i], row)]
    return hits[0] if hits else None


def test_every_picture_gets_a_drawn_embedding_independent_of_its_own_and_dropped_ones_stay_dropped(data):
    backend, encoded = data
    n = len(encoded)
    own_kept = drawn_total = dropped = 0
    drawn = Counter()
    for step in range(300):
        gen = torch.Generator().manual_seed(step)
        indices = [step % n, (step + 1) % n]
        batch = make_batch(encoded, indices, gen, CONFIG, backend.alphas_cumprod)
        after = shuffle_embeddings(batch, gen, encoded)
        assert set(after) == set(batch) and all(torch.equal(after[k], batch[k]) for k in batch if k != "feats")
        for i, before_row, after_row in zip(indices, batch["feats"], after["feats"]):
            if torch.equal(before_row, encoded.dropped_features[0]):  # condition dropout: stays dropped
                assert torch.equal(after_row, before_row)
                dropped += 1
                continue
            j = row_of(encoded.features, after_row)
            assert j is not None, "a shuffled row is some picture's embedding"
            drawn[j] += 1
            drawn_total += 1
            own_kept += j == i
    assert dropped > 50  # drop_image 0.3 of 600 rows
    assert set(drawn) == set(range(n))  # drawn from the whole set, not only the batch
    # independent of the picture: its own embedding about 1 / n of the time (a derangement would give 0)
    assert abs(own_kept / drawn_total - 1 / n) < 0.06, (own_kept, drawn_total, n)


def test_the_same_generator_draws_the_same_shuffle(data):
    backend, encoded = data
    batches = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(11)
        batch = make_batch(encoded, [0, 1], gen, CONFIG, backend.alphas_cumprod)
        batches.append(shuffle_embeddings(batch, gen, encoded)["feats"])
    assert torch.equal(*batches)


def test_a_control_run_is_shuffled_and_says_so_in_its_adapter_and_report(tmp_path, samples):
    def run(name, control):
        return train_in_memory(samples, micro_sd15(), micro_clip(), CONFIG, tmp_path / f"{name}-run",
                               tmp_path / f"{name}.safetensors", control=control)

    normal, control = run("normal", None), run("control", SHUFFLED_EMBEDDINGS)
    assert normal.losses != control.losses  # the control reached the steps
    assert inspect_adapter(tmp_path / "control.safetensors")["metadata"]["control"] == SHUFFLED_EMBEDDINGS.note
    assert "control" not in inspect_adapter(tmp_path / "normal.safetensors")["metadata"]
    report = json.loads((control.run_dir / "report.json").read_text())
    assert report["control"] == SHUFFLED_EMBEDDINGS.note and "shuffled" in report["control"]
    assert "control" not in json.loads((normal.run_dir / "report.json").read_text())


def test_the_control_refuses_a_single_picture_before_any_adapter_is_written(tmp_path, samples):
    with pytest.raises(IPAdapterError, match="data set of 2 or more pictures"):
        train_in_memory(samples[:1], micro_sd15(), micro_clip(), CONFIG, tmp_path / "run", tmp_path / "a.safetensors",
                        control=SHUFFLED_EMBEDDINGS)
    assert not (tmp_path / "a.safetensors").exists()
