"""The tier rule of tests/conftest.py: every test module declares its tier (`pytestmark = pytest.mark.unit`), a
test's own tier marker overrides its module's, and a test without a tier stops the run at collection."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SERVER_GROUP, TIERS, runs_last, tier_of, work_unit

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
    (pytester.path / "tests" / "comfyui").mkdir(parents=True)
    # the ComfyUI harness the conftest registers (an xdist worker is a fresh process: it imports it from here)
    (pytester.path / "tests" / "comfyui" / "harness.py").write_text((TESTS / "comfyui" / "harness.py").read_text())
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
    suite.write("comfyui/test_server_x.py", "pytestmark = [pytest.mark.skipif(False, reason=''), pytest.mark.server]\n\n"
                                    "def test_served():\n    pass\n")
    selected = {tier: collected(suite.runpytest("--collect-only", "-q", "-m", tier)) for tier in TIERS}
    assert selected == {"unit": ["tests/test_mixed.py::test_in_process"],
                        "cli": ["tests/test_mixed.py::test_in_a_subprocess"],
                        "server": ["tests/comfyui/test_server_x.py::test_served"], "browser": []}
    result = suite.runpytest("-m", "not server")
    assert result.ret == 0
    assert "tiers: unit 1 tests 0 s, cli 1 tests 0 s" in result.outlines


def test_the_sdxl_server_tests_are_moved_to_the_end_in_their_order(suite):
    suite.write("comfyui/test_server_a.py", "pytestmark = pytest.mark.server\n\n"
                             "def test_1(sdxl_comfy):\n    pass\n\ndef test_2():\n    pass\n\n"
                             "def test_3(tmp_path, sdxl_comfy):\n    pass\n")
    suite.write("test_b.py", "pytestmark = pytest.mark.unit\n\ndef test_4():\n    pass\n")
    assert collected(suite.runpytest("--collect-only", "-q")) == [
        "tests/comfyui/test_server_a.py::test_2", "tests/test_b.py::test_4", "tests/comfyui/test_server_a.py::test_1",
        "tests/comfyui/test_server_a.py::test_3"]


def test_every_collected_test_has_exactly_one_tier(request):
    for test in request.session.items:
        assert len([m for m in test.iter_markers() if m.name in TIERS]) == 1, test.nodeid
    assert request.node.get_closest_marker("unit")


def test_in_this_session_nothing_runs_after_the_sdxl_server_tests(request):
    order = [runs_last(test) for test in request.session.items]
    assert order == sorted(order), "a test runs after the SDXL server module has stopped the other servers"


def test_a_server_test_outside_the_server_modules_stops_the_run_at_collection(suite):
    suite.write("test_mixed.py", "pytestmark = pytest.mark.unit\n\ndef test_a():\n    pass\n\n"
                                 "@pytest.mark.server\ndef test_served():\n    pass\n")
    result = suite.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = [line for line in result.errlines if line.startswith("ERROR:")]
    assert line == ("ERROR: 1 test module(s) outside tests/comfyui/test_server_*.py or tests/comfyui/test_browser*.py "
                    "hold server or browser tests (tests/test_mixed.py): move them into such a module, so that "
                    "parallel runs keep them on one worker."), line


def test_work_units_are_modules_and_the_server_modules_are_one():
    assert work_unit("tests/test_cli.py::test_a[x::y]") == "tests/test_cli.py"
    assert work_unit("tests/comfyui/test_nodes_train.py::test_b") == "tests/comfyui/test_nodes_train.py"
    assert work_unit("tests/comfyui/test_server_sdxl.py::test_c") == SERVER_GROUP
    assert work_unit("tests/comfyui/test_browser.py::test_d") == SERVER_GROUP


def test_under_xdist_the_server_modules_run_on_one_worker_and_the_tiers_are_still_counted(suite):
    for name in ("comfyui/test_server_one.py", "comfyui/test_server_two.py", "comfyui/test_browser.py"):
        suite.write(name, "pytestmark = pytest.mark.server\n\n"
                          + "".join(f"def test_{i}():\n    pass\n\n" for i in range(3)))
    for name in ("test_u1.py", "test_u2.py", "test_u3.py"):
        suite.write(name, "pytestmark = pytest.mark.unit\n\n"
                          + "".join(f"def test_{i}():\n    pass\n\n" for i in range(3)))
    result = suite.runpytest("-n", "2", "-v")
    assert result.ret == 0
    workers = {}
    for line in result.outlines:  # "[gw1] [ 11%] PASSED tests/comfyui/test_server_one.py::test_0"
        if " PASSED " in line:
            workers.setdefault(work_unit(line.split()[-1]), set()).add(line.split()[0])
    assert len(workers) == 4 and len(workers[SERVER_GROUP]) == 1, workers  # 9 server tests, one worker
    assert "tiers: unit 9 tests 0 s, server 9 tests 0 s" in result.outlines
