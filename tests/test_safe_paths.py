"""Names that must stay inside a folder (resolve_inside) and the common size of an IMAGE batch: core
helpers the node pack uses, tested without ComfyUI."""
from __future__ import annotations

import pytest
from PIL import Image

from ipadapter_train.storage.common_size import common_size, to_common_size
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.storage.safe_paths import is_absolute_anywhere, resolve_inside

pytestmark = pytest.mark.unit


def test_resolve_inside_keeps_names_inside_the_root(tmp_path):
    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    root = tmp_path / "root"
    assert resolve_inside(root, "a/b") == (root / "a" / "b").resolve()
    assert resolve_inside(root, "a/../a") == (root / "a").resolve()
    assert resolve_inside(root, "") == root.resolve() == resolve_inside(root, ".")
    assert resolve_inside(root, "not/yet/there") == (root / "not" / "yet" / "there").resolve()


@pytest.mark.parametrize("name", ["..", "../..", "../root2", "a/../../x", "a/b/../../../x"])
def test_resolve_inside_refuses_traversal(tmp_path, name):
    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    with pytest.raises(IPAdapterError, match="leads out of"):
        resolve_inside(tmp_path / "root", name)


@pytest.mark.parametrize("name", ["/etc", "C:\\x", "C:x", "\\\\server\\share", "\\x", "~", "~user/x"])
def test_resolve_inside_refuses_absolute_names_of_any_platform(tmp_path, name):
    assert is_absolute_anywhere(name)
    with pytest.raises(IPAdapterError, match="absolute path"):
        resolve_inside(tmp_path, name)


def test_resolve_inside_refuses_a_symlink_that_leads_out(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    try:
        (tmp_path / "root" / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
        (tmp_path / "root" / "inner").symlink_to(tmp_path / "root", target_is_directory=True)
    except OSError:
        pytest.skip("this file system does not allow symlinks")
    for name in ("link", "link/file.png"):
        with pytest.raises(IPAdapterError, match="leads out of"):
            resolve_inside(tmp_path / "root", name)
    assert resolve_inside(tmp_path / "root", "inner") == (tmp_path / "root").resolve()  # a link that stays in


def test_resolve_inside_refuses_unusable_names_with_a_sentence(tmp_path):
    with pytest.raises(IPAdapterError, match="not a usable path"):
        resolve_inside(tmp_path, "a\x00b")


def test_common_size_is_the_smallest_short_side_and_the_smallest_scaled_width_and_height():
    assert common_size([(200, 100), (300, 120)]) == (100, (200, 100), [(200, 100), (250, 100)])
    short, size, _ = common_size([(400, 300), (300, 400), (512, 512)])  # mixed orientations: a square
    assert (short, size) == (300, (300, 300))


def test_to_common_size_passes_equal_sizes_through_untouched():
    images = [Image.new("RGB", (90, 70), c) for c in ("red", "blue")]
    out, changes = to_common_size(images, ["a", "b"])
    assert changes == [] and all(o is i for o, i in zip(out, images))


def test_to_common_size_never_enlarges_and_names_what_it_changed():
    images = [Image.new("RGB", (120, 80), "red"), Image.new("RGB", (80, 160), "blue"), Image.new("RGB", (80, 80), "green")]
    out, changes = to_common_size(images, ["wide", "tall", "square"])
    assert {o.size for o in out} == {(80, 80)}
    assert changes == ["wide: 120x80 centre-cropped to 80x80", "tall: 80x160 centre-cropped to 80x80"]
