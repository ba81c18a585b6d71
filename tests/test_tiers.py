"""The tier rule of tests/conftest.py: new test files get a tier by what they do, without edits."""
from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import cli, pytest_collection_modifyitems, run_cli, runs_last, tier_of

# The cases below name subprocess and cli; an explicit marker keeps this module itself in "unit".
pytestmark = pytest.mark.unit


def _spawn():
    return subprocess.run(["true"], check=False)


def _via_helper():
    return _spawn()


def _runs_the_command_in_a_subprocess():
    return cli("--help")


def _runs_the_command_in_process():
    return run_cli("--help")


def _plain():
    return 1 + 1


def item(func, name: str = "test_new.py", fixtures: tuple[str, ...] = (), marks: tuple[str, ...] = ()):
    """What `tier_of` reads of a collected test."""
    return SimpleNamespace(path=Path("tests") / name, fixturenames=list(fixtures), function=func,
                           iter_markers=lambda: [SimpleNamespace(name=m) for m in marks])


def test_tiers_by_module_name_fixture_and_code():
    assert tier_of(item(_plain)) == "unit"
    assert tier_of(item(_runs_the_command_in_process)) == "unit"
    assert tier_of(item(_runs_the_command_in_a_subprocess)) == "cli"
    assert tier_of(item(_via_helper)) == "cli"  # subprocess reached through a helper of the same module
    assert tier_of(item(_plain, fixtures=("tmp_path", "comfy"))) == "server"
    assert tier_of(item(_plain, name="comfyui/test_server_new.py")) == "server"
    assert tier_of(item(_plain, name="comfyui/test_browser_more.py")) == "browser"


def test_an_explicit_tier_marker_wins():
    assert tier_of(item(_via_helper, marks=("slow", "unit"))) == "unit"
    assert tier_of(item(_plain, name="comfyui/test_server_new.py", marks=("cli",))) == "cli"


def test_every_collected_test_has_a_tier(request):
    tiers = {"unit", "cli", "server", "browser"}
    for test in request.session.items:
        assert {m.name for m in test.iter_markers()} & tiers, test.nodeid
    assert request.node.get_closest_marker("unit")


def test_the_sdxl_server_tests_are_moved_to_the_end_in_their_order():
    a, b, c, d = (item(_plain, name=f"test_{n}.py", fixtures=f) for n, f in
                  (("a", ("comfy",)), ("b", ("sdxl_comfy", "tmp_path")), ("c", ()), ("d", ("sdxl_comfy",))))
    for each in (a, b, c, d):
        each.nodeid, each.get_closest_marker, each.add_marker = each.path.name, lambda name: None, lambda mark: None
    items = [a, b, c, d]
    pytest_collection_modifyitems(None, items)
    assert items == [a, c, b, d]


def test_in_this_session_nothing_runs_after_the_sdxl_server_tests(request):
    order = [runs_last(test) for test in request.session.items]
    assert order == sorted(order), "a test runs after the SDXL server module has stopped the other servers"
