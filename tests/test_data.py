"""Tests for ipadapter_train.storage.data: real image files written with Pillow into tmp_path."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipadapter_train.storage.data import (
    IMAGE_EXTENSIONS,
    DatasetReport,
    Sample,
    load_image,
    load_image_folder,
)
from ipadapter_train.storage.image_ops import center_crop, hflip, limit_aspect, resize_short_side, to_tensor
from ipadapter_train.errors import IPAdapterError

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[1] / "ipadapter_train" / "assets" / "samples"
RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def _png(path: Path, size: tuple[int, int] = (96, 80), color=(10, 120, 200)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _close(pixel, expected, tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- folders and captions -------------------------------------------------------------------


def test_shipped_samples_load_with_their_captions():
    samples, report = load_image_folder(SAMPLES)
    names = [s.path.name for s in samples]
    assert names == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "horse.jpg", "rocket.jpg"]
    for sample in samples:
        assert isinstance(sample, Sample)
        assert sample.image.mode == "RGB"
        assert sample.caption == sample.path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert sample.caption  # every shipped sample is captioned
    assert samples[1].caption == "a photo of a tabby cat with green eyes"
    assert report.captions_from == "txt"
    assert report.skipped == [] and report.missing_captions == []
    assert report.used == names
    assert report.sizes[1] == (451, 300)


def test_images_sorted_by_name_case_insensitive_extension_and_non_images_ignored(tmp_path):
    _png(tmp_path / "b.png")
    Image.new("RGB", (80, 80)).save(tmp_path / "a.JPG", format="JPEG")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 macOS metadata")
    samples, report = load_image_folder(tmp_path)
    assert [s.path.name for s in samples] == ["a.JPG", "b.png"]
    assert report.skipped == []
    assert ".jpg" in IMAGE_EXTENSIONS and ".webp" in IMAGE_EXTENSIONS and ".bmp" in IMAGE_EXTENSIONS


def test_data_json_decides_images_and_captions(tmp_path, caplog):
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name)
    (tmp_path / "a.txt").write_text("ignored txt caption")
    entries = [
        {"image_file": "b.png", "text": "  caption of b "},
        {"image_file": "a.png", "text": "caption of a"},
        {"image_file": "gone.png", "text": "file was deleted"},
    ]
    (tmp_path / "data.json").write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING):
        samples, report = load_image_folder(tmp_path)
    assert [(s.path.name, s.caption) for s in samples] == [("b.png", "caption of b"), ("a.png", "caption of a")]
    assert report.captions_from == "data.json"
    assert [name for name, _ in report.skipped] == ["gone.png"]
    assert any("gone.png" in message for message in _warnings(caplog))


def test_data_json_in_subfolder_path(tmp_path):
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs" / "x.png")
    (tmp_path / "data.json").write_text(json.dumps([{"image_file": "imgs/x.png", "text": "sub"}]))
    samples, _ = load_image_folder(tmp_path)
    assert len(samples) == 1 and samples[0].caption == "sub"


def test_prompt_overrides_txt_and_data_json(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("txt caption")
    (tmp_path / "data.json").write_text(json.dumps([{"image_file": "a.png", "text": "json caption"}]))
    samples, report = load_image_folder(tmp_path, prompt=" a photo of sks ")
    assert [(s.path.name, s.caption) for s in samples] == [("a.png", "a photo of sks"), ("b.png", "a photo of sks")]
    assert report.captions_from == "prompt"


def test_blank_prompt_falls_back_to_txt(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("\ufefftxt caption\n", encoding="utf-8")
    samples, _ = load_image_folder(tmp_path, prompt="   ")
    assert samples[0].caption == "txt caption"


def test_missing_caption_warns_once_and_uses_empty_caption(tmp_path, caplog):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    _png(tmp_path / "c.png")
    (tmp_path / "a.txt").write_text("has a caption")
    (tmp_path / "c.txt").write_text("   \n")  # blank counts as missing
    with caplog.at_level(logging.WARNING):
        samples, report = load_image_folder(tmp_path)
    assert [s.caption for s in samples] == ["has a caption", "", ""]
    assert report.missing_captions == ["b.png", "c.png"]
    assert report.captions_from == "mixed"
    caption_warnings = [m for m in _warnings(caplog) if "caption" in m]
    assert len(caption_warnings) == 1
    assert "b.png" in caption_warnings[0] and "c.png" in caption_warnings[0]


def test_no_captions_at_all_reports_none(tmp_path):
    _png(tmp_path / "a.png")
    _, report = load_image_folder(tmp_path)
    assert report.captions_from == "none"


# --- colour modes -------------------------------------------------------------------------


def test_rgba_transparent_area_becomes_white(tmp_path):
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent *black*: must not stay black
    image.paste((255, 0, 0, 255), (0, 0, 32, 64))
    image.paste((0, 0, 0, 128), (32, 0, 64, 8))  # half-transparent black over white = mid grey
    image.save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png")
    assert loaded.mode == "RGB" and loaded.size == (64, 64)
    assert loaded.getpixel((10, 30)) == RED
    assert loaded.getpixel((50, 40)) == WHITE
    assert _close(loaded.getpixel((50, 4)), (127, 127, 127), tol=2)


def test_la_transparent_area_becomes_white(tmp_path):
    image = Image.new("LA", (64, 64), (0, 0))
    image.paste((40, 255), (0, 0, 32, 64))
    image.save(tmp_path / "la.png")
    loaded = load_image(tmp_path / "la.png")
    assert loaded.mode == "RGB"
    assert loaded.getpixel((5, 5)) == (40, 40, 40)
    assert loaded.getpixel((60, 5)) == WHITE


def test_palette_with_transparency_becomes_white(tmp_path):
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    image.paste(1, (0, 0, 32, 64))
    image.save(tmp_path / "pal.png", transparency=0)  # index 0 (black) is transparent
    assert Image.open(tmp_path / "pal.png").mode == "P"
    loaded = load_image(tmp_path / "pal.png")
    assert loaded.getpixel((5, 5)) == RED
    assert loaded.getpixel((60, 5)) == WHITE


def test_grayscale_and_bilevel_become_rgb(tmp_path):
    Image.new("L", (64, 64), 77).save(tmp_path / "grey.png")
    Image.new("1", (64, 64), 1).save(tmp_path / "bw.png")
    assert load_image(tmp_path / "grey.png").getpixel((3, 3)) == (77, 77, 77)
    bw = load_image(tmp_path / "bw.png")
    assert bw.mode == "RGB" and bw.getpixel((3, 3)) == WHITE


def test_16bit_png_is_scaled_by_bit_depth_not_clipped(tmp_path):
    values = np.zeros((64, 64), dtype=np.uint16)
    values[:, :32] = 65535
    values[:, 32:] = 32896  # 128 * 257: mid grey in 16 bits
    values[:4, 32:] = 1000  # ~3.9 in 8 bits: clipping would make this 255
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    loaded = load_image(tmp_path / "deep.png")
    assert loaded.mode == "RGB"
    assert _close(loaded.getpixel((5, 20)), (255, 255, 255), tol=1)
    assert _close(loaded.getpixel((50, 20)), (128, 128, 128), tol=1)
    assert _close(loaded.getpixel((50, 1)), (4, 4, 4), tol=1)


def test_16bit_big_endian_mode_is_scaled(tmp_path):
    image = Image.frombytes("I;16B", (64, 64), np.full((64, 64), 32896, dtype=">u2").tobytes())
    assert image.mode == "I;16B"
    image.save(tmp_path / "be.tif")
    assert _close(load_image(tmp_path / "be.tif").getpixel((0, 0)), (128, 128, 128), tol=1)


def test_float_and_int32_images_use_their_range(tmp_path):
    unit = np.zeros((64, 64), dtype=np.float32)
    unit[:, 32:] = 0.5
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    loaded = load_image(tmp_path / "unit.tif")
    assert loaded.getpixel((0, 0)) == (0, 0, 0) and _close(loaded.getpixel((40, 0)), (128, 128, 128), tol=1)

    hdr = np.zeros((64, 64), dtype=np.float32)
    hdr[:, 32:] = 1000.0  # outside 0..1: stretched by the real range, not clipped
    hdr[:, 48:] = 500.0
    Image.fromarray(hdr, mode="F").save(tmp_path / "hdr.tif")
    loaded = load_image(tmp_path / "hdr.tif")
    assert loaded.getpixel((40, 0)) == WHITE and _close(loaded.getpixel((60, 0)), (128, 128, 128), tol=1)

    wide = np.zeros((64, 64), dtype=np.int32)
    wide[:, 32:] = 200_000
    Image.fromarray(wide, mode="I").save(tmp_path / "wide.tif")
    loaded = load_image(tmp_path / "wide.tif")
    assert loaded.getpixel((0, 0)) == (0, 0, 0) and loaded.getpixel((40, 0)) == WHITE


def test_cmyk_jpeg_becomes_correct_rgb(tmp_path):
    image = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    image.paste((255, 255, 0, 0), (32, 0, 64, 64))  # pure blue
    image.save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    loaded = load_image(tmp_path / "cmyk.jpg")
    assert loaded.mode == "RGB"
    assert _close(loaded.getpixel((10, 30)), RED, tol=20)
    assert _close(loaded.getpixel((54, 30)), BLUE, tol=20)


def test_exif_orientation_6_is_applied(tmp_path):
    # Stored 40 wide x 20 tall: left half red, right half blue, green marker at the top-left.
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    image.paste(GREEN, (0, 0, 6, 6))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "phone.jpg", quality=100, subsampling=0, exif=exif.tobytes())
    loaded = load_image(tmp_path / "phone.jpg")
    assert loaded.size == (20, 40)
    # A viewer turns the stored left half into the top half and the top-left corner into the top-right.
    assert _close(loaded.getpixel((10, 12)), RED, tol=30)
    assert _close(loaded.getpixel((10, 32)), BLUE, tol=30)
    assert _close(loaded.getpixel((17, 2)), GREEN, tol=30)
    assert _close(loaded.getpixel((2, 2)), RED, tol=30)


def test_webp_and_bmp_load_from_folder(tmp_path):
    Image.new("RGB", (70, 90), RED).save(tmp_path / "one.webp", lossless=True)
    Image.new("RGB", (90, 70), BLUE).save(tmp_path / "two.bmp")
    samples, report = load_image_folder(tmp_path)
    assert [s.path.name for s in samples] == ["one.webp", "two.bmp"]
    assert samples[0].image.getpixel((5, 5)) == RED and samples[1].image.getpixel((5, 5)) == BLUE
    assert report.sizes == [(70, 90), (90, 70)]


# --- skipped files and errors -------------------------------------------------------------


def test_corrupt_truncated_and_tiny_files_are_skipped_with_one_warning(tmp_path, caplog):
    _png(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"this is not a png at all" * 10)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "full.jpg").unlink()
    _png(tmp_path / "tiny.png", size=(200, 40))
    with caplog.at_level(logging.WARNING):
        samples, report = load_image_folder(tmp_path, min_side=64)
    assert [s.path.name for s in samples] == ["good.png"]
    skipped = dict(report.skipped)
    assert set(skipped) == {"corrupt.png", "truncated.jpg", "tiny.png"}
    assert skipped["tiny.png"].startswith("too small") and "200x40" in skipped["tiny.png"]
    assert "truncated" in skipped["truncated.jpg"]
    skip_warnings = [m for m in _warnings(caplog) if "Skipped" in m]
    assert len(skip_warnings) == 1
    assert all(name in skip_warnings[0] for name in ("corrupt.png", "truncated.jpg", "tiny.png"))


def test_load_image_raises_naming_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_text("hello")
    with pytest.raises(IPAdapterError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(IPAdapterError, match=r"contains no images \(jpg, png, webp, bmp\)"):
        load_image_folder(tmp_path)


def test_folder_of_only_unusable_files_is_an_error(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    _png(tmp_path / "small.png", size=(32, 32))
    with pytest.raises(IPAdapterError, match="no usable image") as info:
        load_image_folder(tmp_path)
    message = str(info.value)
    assert "broken.jpg" in message and "small.png" in message and "too small" in message


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(IPAdapterError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    _png(tmp_path / "a.png")
    with pytest.raises(IPAdapterError, match="not a folder"):
        load_image_folder(tmp_path / "a.png")


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[{'image_file': 'a.png'}", "not valid JSON"),
        ('{"image_file": "a.png", "text": "x"}', "must be a list"),
        ("[]", "lists no images"),
        ('[{"text": "no file"}]', 'Entry 1 .* "image_file"'),
        ('[{"image_file": "a.png", "text": 5}]', '"text" that is not a string'),
    ],
)
def test_malformed_data_json_is_an_error(tmp_path, content, expected):
    _png(tmp_path / "a.png")
    (tmp_path / "data.json").write_text(content)
    with pytest.raises(IPAdapterError, match=expected) as info:
        load_image_folder(tmp_path)
    assert "data.json" in str(info.value)


# --- report -------------------------------------------------------------------------------


def test_report_to_dict_and_summary(tmp_path):
    _png(tmp_path / "a.png", size=(100, 80))
    _png(tmp_path / "b.png", size=(300, 200))
    (tmp_path / "c.png").write_bytes(b"junk")
    (tmp_path / "a.txt").write_text("cap")
    _, report = load_image_folder(tmp_path)
    assert isinstance(report, DatasetReport)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["used"] == ["a.png", "b.png"] and data["sizes"] == [[100, 80], [300, 200]]
    assert data["skipped"][0][0] == "c.png" and data["missing_captions"] == ["b.png"]
    text = report.summary()
    assert "2 image(s) used" in text and "1 skipped" in text and "c.png" in text
    assert "smallest 100x80" in text and "largest 300x200" in text


# --- preprocessing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size_in, short, expected",
    [((640, 427), 512, (768, 512)), ((300, 451), 512, (512, 768)), ((500, 500), 512, (512, 512)), ((1000, 333), 64, (192, 64))],
)
def test_resize_short_side(size_in, short, expected):
    out = resize_short_side(Image.new("RGB", size_in), short)
    assert out.size == expected
    assert out.size[0] % 8 == 0 and out.size[1] % 8 == 0


def test_resize_long_side_never_below_short_side():
    out = resize_short_side(Image.new("RGB", (101, 100)), 100, multiple=8)
    assert min(out.size) == 100 and max(out.size) >= 100


def test_limit_aspect_keeps_the_centre_of_a_panorama_and_passes_usual_photos():
    wide = Image.new("RGB", (1000, 100), BLUE)
    wide.paste(RED, (450, 0, 550, 100))
    cropped = limit_aspect(wide, 2)
    assert cropped.size == (200, 100)
    assert cropped.getpixel((100, 50)) == RED and cropped.getpixel((0, 50)) == BLUE
    assert limit_aspect(Image.new("RGB", (60, 700)), 2).size == (60, 120)
    for size in ((400, 300), (300, 450), (1600, 900), (200, 100)):
        photo = Image.new("RGB", size)
        assert limit_aspect(photo, 2) is photo
    with pytest.raises(ValueError, match="at least 1"):
        limit_aspect(wide, 0.5)


def test_center_crop_takes_the_middle():
    image = Image.new("RGB", (768, 512), RED)
    image.paste(BLUE, (128, 0, 640, 512))  # exactly the central 512 square
    crop = center_crop(image, 512)
    assert crop.size == (512, 512)
    assert crop.getcolors() == [(512 * 512, BLUE)]
    with pytest.raises(ValueError):
        center_crop(Image.new("RGB", (100, 600)), 512)


def test_to_tensor_range_shape_and_hflip():
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.putpixel((3, 1), (255, 128, 0))
    tensor = to_tensor(image)
    assert tensor.shape == (3, 2, 4) and tensor.dtype == torch.float32
    assert tensor.min().item() == -1.0 and tensor.max().item() == 1.0
    assert tensor[:, 1, 3].tolist() == pytest.approx([1.0, 128 / 127.5 - 1.0, -1.0], abs=1e-6)
    assert tensor[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    flipped = hflip(image)
    assert flipped.getpixel((0, 1)) == (255, 128, 0) and flipped.getpixel((3, 1)) == (0, 0, 0)
    with pytest.raises(ValueError):
        to_tensor(Image.new("RGBA", (2, 2)))
