"""The tier rule of tests/conftest.py: every test module declares its tier (`pytestmark = pytest.mark.unit`), a
test's own tier marker overrides its module's, and a test without a tier stops the run at collection."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TIERS, runs_last, tier_of

pytest_plugins = ("pytester",)
pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent


def item(*marks: str):
    """What `tier_of` reads of a collected test: its markers, closest first (its own, then its module's)."""
    return SimpleNamespace(iter_markers=lambda: [SimpleNamespace(name=m) for m in marks])


def test_a_test_has_its_closest_tier_declaration():
    assert tier_of(item("unit")) == "unit"
    assert tier_of(item("parametrize", "cli", "skipif", "unit")) == "cli"  # its own marker, then its module's
    assert tier_of(item("skipif", "browser")) == "browser"
    assert tier_of(item("parametrize", "slow")) is None


@pytest.fixture
def suite(pytester):
    """A scratch suite with this suite's conftest and pytest settings; `write(name, source)` adds a test module."""
    pytester.makepyprojecttoml((TESTS.parent / "pyproject.toml").read_text(encoding="utf-8"))
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "conftest.py").write_text((TESTS / "conftest.py").read_text(encoding="utf-8"))

    def write(name: str, source: str) -> None:
        (pytester.path / "tests" / name).write_text("import pytest\n\n" + source)

    pytester.write = write
    return pytester


def collected(result) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_a_module_that_declares_no_tier_stops_the_run_at_collection(suite):
    suite.write("test_declared.py", "pytestmark = pytest.mark.unit\n\ndef test_a():\n    pass\n")
    suite.write("test_new.py", "@pytest.mark.skipif(False, reason='')\ndef test_b():\n    pass\n")
    for args in (("--collect-only", "-q"), ("-m", "unit")):  # also when -m would leave the test out
        result = suite.runpytest(*args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        (line,) = [line for line in result.errlines if line.startswith("ERROR:")]
        assert line == ("ERROR: 1 test module(s) declare no tier (tests/test_new.py): add `pytestmark = "
                        "pytest.mark.unit` (or cli, server, browser) to each, see tests/conftest.py."), line
        assert not [line for line in result.outlines if "passed" in line]  # nothing ran


def test_minus_m_selects_by_the_closest_declaration(suite):
    suite.write("test_mixed.py", "pytestmark = pytest.mark.unit\n\ndef test_in_process():\n    pass\n\n"
                                 "@pytest.mark.cli\ndef test_in_a_subprocess():\n    pass\n")
    suite.write("test_server_x.py", "pytestmark = [pytest.mark.skipif(False, reason=''), pytest.mark.server]\n\n"
                                    "def test_served():\n    pass\n")
    selected = {tier: collected(suite.runpytest("--collect-only", "-q", "-m", tier)) for tier in TIERS}
    assert selected == {"unit": ["tests/test_mixed.py::test_in_process"],
                        "cli": ["tests/test_mixed.py::test_in_a_subprocess"],
                        "server": ["tests/test_server_x.py::test_served"], "browser": []}
    result = suite.runpytest("-m", "not server")
    assert result.ret == 0
    assert "tiers: unit 1 tests 0 s, cli 1 tests 0 s" in result.outlines


def test_the_sdxl_server_tests_are_moved_to_the_end_in_their_order(suite):
    suite.write("test_a.py", "pytestmark = pytest.mark.server\n\n"
                             "def test_1(sdxl_comfy):\n    pass\n\ndef test_2():\n    pass\n\n"
                             "def test_3(tmp_path, sdxl_comfy):\n    pass\n")
    suite.write("test_b.py", "pytestmark = pytest.mark.unit\n\ndef test_4():\n    pass\n")
    assert collected(suite.runpytest("--collect-only", "-q")) == [
        "tests/test_a.py::test_2", "tests/test_b.py::test_4", "tests/test_a.py::test_1", "tests/test_a.py::test_3"]


def test_every_collected_test_has_exactly_one_tier(request):
    for test in request.session.items:
        assert len([m for m in test.iter_markers() if m.name in TIERS]) == 1, test.nodeid
    assert request.node.get_closest_marker("unit")


def test_in_this_session_nothing_runs_after_the_sdxl_server_tests(request):
    order = [runs_last(test) for test in request.session.items]
    assert order == sorted(order), "a test runs after the SDXL server module has stopped the other servers"
