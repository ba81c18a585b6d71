"""Aspect-ratio buckets and SDXL's size/crop conditioning (time_ids): the bucket table and choice, what is
encoded and trained, the batch plan (one bucket per batch, every image each epoch, deterministic, whole
batches per rank), step counting, resume exactness, and the time_ids of centre and random crops, flips, a
capped panorama and a bucket, on the micro models."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import micro_clip, micro_sd15
from ipadapter_train.api import train_in_memory
from ipadapter_train.training.batches import batch_indices, epoch_batches, make_batch, steps_per_epoch, total_steps
from ipadapter_train.training.buckets import bucket_counts, bucket_table, image_buckets, nearest_bucket
from ipadapter_train.cli.main import build_parser
from ipadapter_train.cli.training import _config_from_args
from ipadapter_train.config import TrainConfig
from ipadapter_train.storage.data import Sample
from ipadapter_train.training.encoding import encode_dataset, prepare_view
from ipadapter_train.errors import TrainingCancelled

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def encoders():
    from ipadapter_train.models.clip_features import CLIPFeatureEncoder
    from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend

    return DiffusersBackend(micro_sd15()), CLIPFeatureEncoder(micro_clip())


def each_step(callback):
    """A progress hook that calls `callback(step, total, loss)` after every step (the run's TRAINING events)."""
    def progress(event):
        if event.phase == "training":
            callback(event.done, event.total, event.loss)
    return progress


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """A noisy RGB picture, so the VAE sees detail."""
    g = torch.Generator().manual_seed(seed)
    array = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


def encode(encoders, sizes, **settings):
    config = TrainConfig(mixed_precision="no", validation=False, **settings)
    samples = [Sample(path=Path(f"{i}.png"), image=picture(w, h, i), caption=f"c{i}") for i, (w, h) in enumerate(sizes)]
    return encode_dataset(samples, *encoders, config), config


# --- the bucket table and the choice ----------------------------------------------------------------


@pytest.mark.parametrize("resolution", [128, 256, 512, 768, 1024])
def test_the_table_holds_sizes_of_at_most_resolution_squared_pixels_within_two_to_one(resolution):
    table = bucket_table(resolution)
    assert (resolution // 64 * 64,) * 2 in table
    for w, h in table:
        assert w % 64 == 0 and h % 64 == 0 and w * h <= resolution ** 2
        assert 0.5 <= w / h <= 2 and (h, w) in table  # every shape has its transpose
    assert len({w / h for w, h in table}) == len(table)  # one bucket per aspect ratio: the largest


def test_at_1024_the_table_has_sdxls_usual_training_sizes():
    assert {(1024, 1024), (1152, 896), (1216, 832), (1344, 768), (1408, 704), (704, 1408)} <= set(bucket_table(1024))


@pytest.mark.parametrize("size, bucket", [
    ((500, 500), (512, 512)),  # square
    ((800, 600), (576, 448)),  # 4:3
    ((1000, 500), (640, 320)),  # 2:1
    ((100, 300), (320, 640)),  # 1:3: the tallest bucket, 1:2
    ((40, 30), (576, 448)),  # tiny: upscaled to its bucket
])
def test_each_image_goes_to_the_bucket_of_the_nearest_aspect_ratio(size, bucket):
    assert nearest_bucket(*size, 512) == bucket
    view = prepare_view(picture(*size), 512, bucket)
    w, h = view.image.size
    assert w >= bucket[0] and h >= bucket[1] and w % 8 == 0 and h % 8 == 0  # covers the bucket, on the latent grid
    assert (w - bucket[0]) * (h - bucket[1]) == 0 and max(w - bucket[0], h - bucket[1]) <= 0.2 * max(bucket)
    assert view.target == (bucket[1], bucket[0])


def test_buckets_are_off_by_default_and_the_cli_turns_them_on():
    assert TrainConfig().buckets is False and image_buckets([(100, 50)], TrainConfig()) is None
    args = build_parser().parse_args(["train", "--images", "x", "--base-model", "m", "--image-encoder", "c",
                                      "--out", "o.safetensors", "--buckets"])
    assert _config_from_args(args).buckets is True
    args = build_parser().parse_args(["train", "--images", "x", "--base-model", "m", "--image-encoder", "c",
                                      "--out", "o.safetensors"])
    assert _config_from_args(args).buckets is False


# --- what is encoded and trained --------------------------------------------------------------------------


def test_a_two_to_one_image_trains_whole_instead_of_a_square_crop(encoders):
    data, config = encode(encoders, [(256, 128)], resolution=128, buckets=True)
    assert tuple(data.latent_mean[0].shape) == (4, 8, 16)  # the 128x64 bucket
    batch = make_batch(data, [0], torch.Generator().manual_seed(0), config, encoders[0].alphas_cumprod)
    assert tuple(batch["noisy"].shape) == (1, 4, 8, 16)
    square, config = encode(encoders, [(256, 128)], resolution=128)
    batch = make_batch(square, [0], torch.Generator().manual_seed(0), config, encoders[0].alphas_cumprod)
    assert tuple(square.latent_mean[0].shape) == (4, 16, 32) and tuple(batch["noisy"].shape) == (1, 4, 16, 16)


# --- the batch plan ----------------------------------------------------------------------------------------


def test_a_batch_holds_one_bucket_and_a_short_bucket_repeats_its_images():
    config = TrainConfig(resolution=128, buckets=True, batch_size=2, epochs=3)
    buckets = image_buckets([(200, 100), (100, 100), (210, 100)], config)  # 128x64, 128x128, 128x64
    assert steps_per_epoch(config, 3, 1, buckets) == 2 and total_steps(config, [(200, 100), (100, 100), (210, 100)]) == 6
    for step in range(6):
        batch = batch_indices(step, 3, config, 0, 1, buckets)
        assert len(batch) == 2 and len({buckets[i] for i in batch}) == 1, batch
        if buckets[batch[0]] == (128, 128):
            assert batch == [1, 1]
        else:
            assert sorted(batch) == [0, 2]


@pytest.mark.parametrize("batch_size, world", [(1, 1), (3, 1), (2, 2)])
def test_an_epoch_covers_every_image_and_every_rank_gets_a_whole_batch_of_one_bucket(batch_size, world):
    sizes = [(100 + 37 * i % 150, 100 + 53 * i % 120) for i in range(11)]
    config = TrainConfig(resolution=256, buckets=True, batch_size=batch_size, epochs=2)
    buckets = image_buckets(sizes, config)
    assert len(set(buckets)) >= 3
    spe = steps_per_epoch(config, len(sizes), world, buckets)
    per_step = batch_size * world
    assert spe == sum(math.ceil(c / per_step) for c in bucket_counts(buckets).values())
    assert total_steps(config, sizes, world) == 2 * spe
    for epoch in range(2):
        seen = []
        for step in range(epoch * spe, (epoch + 1) * spe):
            for rank in range(world):
                batch = batch_indices(step, len(sizes), config, rank, world, buckets)
                assert len(batch) == batch_size and len({buckets[i] for i in batch}) == 1
                seen += batch
        assert set(seen) == set(range(len(sizes)))


def test_the_plan_is_a_function_of_seed_and_epoch():
    config = TrainConfig(resolution=256, buckets=True, batch_size=2, seed=5)
    buckets = image_buckets([(100 + 13 * i, 100) for i in range(9)], config)
    first = epoch_batches(config, buckets, 1, 0)
    assert epoch_batches(config, buckets, 1, 0) == first
    others = [epoch_batches(config, buckets, 1, e) for e in range(1, 6)]
    others.append(epoch_batches(dataclasses.replace(config, seed=6), buckets, 1, 0))
    assert any(plan != first for plan in others)  # shuffled anew: not one fixed order


@pytest.mark.parametrize("images, batch_size, world", [(5, 1, 1), (7, 2, 1), (7, 3, 2), (1, 4, 3)])
def test_without_buckets_the_step_counts_are_the_configs(images, batch_size, world):
    config = TrainConfig(batch_size=batch_size, epochs=3)
    assert total_steps(config, [(640, 427)] * images, world) == config.total_steps(images, world)
    assert steps_per_epoch(config, images, world) == config.steps_per_epoch(images, world)
    assert total_steps(dataclasses.replace(config, max_steps=7, buckets=True), [(640, 427)] * images, world) == 7


# --- a run with buckets ----------------------------------------------------------------------------------


def run(tmp_path, samples, name, **kw):
    config = TrainConfig(resolution=128, buckets=True, batch_size=2, epochs=2, flip=True, random_crop=True,
                         checkpoint_every=2, mixed_precision="no", validation=False, seed=3)
    return train_in_memory(samples, micro_sd15(), micro_clip(), config, tmp_path / f"{name}-run",
                           tmp_path / f"{name}.safetensors", **kw)


def test_a_bucketed_run_resumes_exactly_and_reports_its_buckets(tmp_path, samples):
    # the samples at 128 px: two near-square (128x128), three landscape (128x64): 1 + 2 steps per epoch
    full = run(tmp_path, samples, "full")
    assert full.total_steps == 6 and full.steps_done == 6

    def stop_at_4(step, total, loss):
        if step == 4:
            raise TrainingCancelled()

    part = run(tmp_path, samples, "part", progress=each_step(stop_at_4))
    assert part.cancelled and part.steps_done == 4
    resumed = run(tmp_path, samples, "part", resume=tmp_path / "part-run")
    assert resumed.steps_done == 6 and resumed.losses == full.losses
    for key, value in full.adapter.state_dict().items():
        assert torch.equal(value, resumed.adapter.state_dict()[key]), key
    report = json.loads((tmp_path / "full-run" / "report.json").read_text())
    assert report["buckets"] == {"128x64": 3, "128x128": 2} and report["config"]["buckets"] is True


# --- time_ids ------------------------------------------------------------------------------------------------


def coded(data):
    """The data set with latents that tell their own coordinates (row * 1000 + column, in the unflipped
    frame) and no posterior noise, so a batch shows which window it took."""
    means = []
    for m in data.latent_mean:
        rows = torch.arange(m.shape[-2]).view(-1, 1) * 1000.0
        means.append((rows + torch.arange(m.shape[-1]).view(1, -1)).expand(m.shape).clone())
    zeros = [torch.zeros_like(m) for m in means]
    return dataclasses.replace(data, latent_mean=means, latent_std=zeros, flip_mean=[m.flip(-1) for m in means],
                               flip_std=zeros)


def windows(data, config, draws=12):
    """(image, time_ids, top, left, flipped) of each drawn sample; top/left in latent cells of the frame drawn."""
    no_noise = torch.ones(1)  # alpha = 1 at the only timestep: noisy is the latent window itself
    out = []
    for seed in range(draws):
        batch = make_batch(data, list(range(len(data))), torch.Generator().manual_seed(seed), config, no_noise)
        for i, (noisy, ids) in enumerate(zip(batch["noisy"], batch["time_ids"])):
            first, last = int(noisy[0, 0, 0]), int(noisy[0, 0, -1])
            width = data.latent_mean[i].shape[-1]
            flipped = first > last
            left = width - 1 - first % 1000 if flipped else first % 1000
            out.append((i, ids.tolist(), first // 1000, left, flipped))
    return out


def test_time_ids_of_a_centre_crop(encoders):
    data, config = encode(encoders, [(160, 96), (64, 64)], resolution=64)
    batch = make_batch(data, [0, 1], torch.Generator().manual_seed(0), config, encoders[0].alphas_cumprod)
    assert batch["time_ids"].dtype == torch.float32
    # 160x96 -> 104x64 (latents 13 wide): the centre window starts at column 2, 16 px
    assert batch["time_ids"].tolist() == [[96, 160, 0, 16, 64, 64], [64, 64, 0, 0, 64, 64]]


def test_time_ids_of_random_crops_and_flips_follow_the_window_taken(encoders):
    data, config = encode(encoders, [(160, 96), (96, 150)], resolution=64, random_crop=True, flip=True)
    seen = set()
    for i, ids, top, left, flipped in windows(coded(data), config, draws=16):
        original = [[96, 160], [150, 96]][i]
        assert ids == [*original, 8 * top, 8 * left, 64, 64]  # nothing is capped: the window alone
        resized_w = data.latent_mean[i].shape[-1] * 8
        if flipped:  # the same pixels, seen unflipped, start at the mirror image of this crop
            assert ids[3] == resized_w - 8 * (data.latent_mean[i].shape[-1] - left - 8) - 64
        seen.add((i, top, left, flipped))
    assert len({(i, f) for i, _, _, f in seen}) == 4 and len(seen) > 6  # both views, several windows


def test_time_ids_of_a_capped_panorama_count_from_the_whole_resized_image(encoders):
    # 401x100 -> the central 200x100 (from column 100) -> 128x64: the whole image resized alike is 256.6 wide
    data, config = encode(encoders, [(401, 100)], resolution=64, flip=True)
    assert data.crop_origin == [(0, 64)] and data.flip_crop_origin == [(0, 65)]
    found = {flipped: ids for _, ids, _, _, flipped in windows(coded(data), config)}
    assert found[False] == [100, 401, 0, 64 + 32, 64, 64]  # centre window: column 4 of 16
    assert found[True] == [100, 401, 0, 65 + 32, 64, 64]
    assert found[True][3] + found[False][3] + 64 == pytest.approx(401 * 0.64, abs=1)  # mirror images


def test_time_ids_of_a_bucket(encoders):
    # 200x150 at 256 px -> the 320x192 bucket; covered at 320x240, the centre window starts 3 cells (24 px) down
    data, config = encode(encoders, [(200, 150)], resolution=256, buckets=True)
    assert tuple(data.latent_mean[0].shape) == (4, 30, 40) and data.target_size == [(192, 320)]
    found = windows(coded(data), config, draws=1)
    assert found[0][1] == [150, 200, 24, 0, 192, 320]
    random_crops = dataclasses.replace(config, random_crop=True)
    drawn = windows(coded(data), random_crops, draws=60)
    assert {left for _, _, _, left, _ in drawn} == {0}  # the bucket's full width: no remainder to move in
    assert {top for _, _, top, _, _ in drawn} == set(range(7))  # it moves within the 48 px remainder only
    assert all(ids == [150, 200, 8 * top, 0, 192, 320] for _, ids, top, _, _ in drawn)
