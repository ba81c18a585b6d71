"""The node schemas against nodes/CONTRACT.md: ids, display names, inputs (names, types, defaults,
optional), outputs, tooltips and bounds; and the pack's registration (entry point only, no V1 mappings)."""
from __future__ import annotations

import asyncio
import re

import pytest

from test_nodes_support import ROOT, comfy_or_skip, pack

pytestmark = pytest.mark.unit

comfy_or_skip()

CONTRACT = (ROOT / "nodes" / "CONTRACT.md").read_text(encoding="utf-8")
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e-?\d+)?$")


def contract_rows() -> dict[str, dict]:
    """node id -> {display, inputs: [(name, type, default text, optional)], outputs: [(name, type)]}."""
    rows = {}
    for line in CONTRACT.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("IPAdapterTrain_"):
            continue
        node, display, inputs, outputs = cells
        parsed = []
        for part in inputs.split(";"):
            m = re.match(r"\s*(\w+): ([A-Z_]+)\s*(.*)", part)
            assert m, f"cannot read contract input {part!r} of {node}"
            rest = m.group(3)
            parsed.append((m.group(1), m.group(2), rest, "(optional)" in rest))
        outs = re.findall(r"(\w+): ([A-Z_]+)", outputs)
        rows[node] = {"display": display, "inputs": parsed, "outputs": outs}
    return rows


ROWS = contract_rows()


def nodes():
    return pack("nodes.extension").NODES


def test_the_contract_table_lists_seven_nodes_and_the_pack_registers_exactly_those():
    assert len(ROWS) == 7
    assert sorted(n.define_schema().node_id for n in nodes()) == sorted(ROWS)


@pytest.mark.parametrize("node_id", sorted(ROWS))
def test_schema_matches_the_contract(node_id):
    node = next(n for n in nodes() if n.define_schema().node_id == node_id)
    schema = node.define_schema()
    want = ROWS[node_id]
    assert schema.display_name == want["display"]
    assert schema.category == "ipadapter_train"
    got_inputs = [(i.id, str(i.get_io_type()), bool(i.optional)) for i in schema.inputs]
    assert [(n, t, o) for n, t, _, o in want["inputs"]] == got_inputs
    for (name, _, rest, _), inp in zip(want["inputs"], schema.inputs):
        words = rest.split()
        if words and NUMBER.match(words[0]):  # INT 512 / FLOAT 1e-4
            assert float(inp.default) == float(words[0]), name
        elif rest.startswith('""'):
            assert inp.default == "", name
        elif words and words[0] in ("true", "false"):
            assert inp.default is (words[0] == "true"), name
        elif re.match(r'^[\w/]+ "[^"]*"', rest):  # COMBO base/plus "base"
            options, default = re.match(r'^([\w/]+) "([^"]*)"', rest).groups()
            assert (inp.options, inp.default) == (options.split("/"), default), name
        bounds = re.search(r"\((-?[\d.e-]+)\.\.(-?[\d.e-]+)", rest)
        if bounds:
            assert (float(inp.min), float(inp.max)) == (float(bounds.group(1)), float(bounds.group(2))), name
    assert [(o.display_name, str(o.io_type)) for o in schema.outputs] == want["outputs"]
    assert schema.is_output_node == ("output node" in CONTRACT.split(node_id)[1].splitlines()[0])


@pytest.mark.parametrize("node", range(7))
def test_every_input_has_a_tooltip_and_numbers_have_bounds(node):
    schema = nodes()[node].define_schema()
    schema.finalize()
    schema.validate()
    for inp in schema.inputs:
        assert inp.tooltip and len(inp.tooltip) > 10, f"{schema.node_id}.{inp.id} has no tooltip"
        if str(inp.get_io_type()) in ("INT", "FLOAT"):
            assert inp.min is not None and inp.max is not None, f"{schema.node_id}.{inp.id} is unbounded"
            assert inp.min <= inp.default <= inp.max
    for out in schema.outputs:
        assert out.tooltip, f"{schema.node_id} output {out.display_name} has no tooltip"
    assert schema.description


def test_nodes_are_classmethod_only_v3_nodes():
    from comfy_api.latest import io

    for node in nodes():
        assert issubclass(node, io.ComfyNode)
        for name in ("define_schema", "execute"):
            assert isinstance(node.__dict__[name], classmethod), f"{node.__name__}.{name}"
        assert not [k for k in node.__dict__ if k.startswith("__init__")]
        node.GET_SCHEMA()  # what ComfyUI calls when registering


def test_the_pack_root_exports_the_entry_point_and_web_directory_but_no_v1_mappings():
    root = pack()
    assert root.WEB_DIRECTORY == "./web"
    assert not hasattr(root, "NODE_CLASS_MAPPINGS")
    extension = asyncio.run(root.comfy_entrypoint())
    listed = asyncio.run(extension.get_node_list())
    assert [n.define_schema().node_id for n in listed] == [n.define_schema().node_id for n in nodes()]


def test_the_adapter_type_is_ipadapter_train_not_ipadapter_plus_type():
    io_types = pack("nodes.io_types")
    assert str(io_types.IPAdapterTrain.io_type) == "IPADAPTER_TRAIN"


def test_the_runs_route_is_registered_once_on_the_server(monkeypatch):
    runs = pack("nodes.runs")

    class Routes:
        def __init__(self):
            self.paths = []

        def get(self, path):
            def add(handler):
                self.paths.append((path, handler))
                return handler
            return add

    class FakeServer:
        def __init__(self):
            self.routes = Routes()

    server = FakeServer()
    monkeypatch.setattr(runs, "PromptServer", type("PS", (), {"instance": server}))
    assert runs.register_routes() and runs.register_routes()
    assert [p for p, _ in server.routes.paths] == ["/ipadapter_train/runs"]
    response = asyncio.run(server.routes.paths[0][1](None))
    assert response.content_type == "application/json"
    monkeypatch.setattr(runs, "PromptServer", None)
    assert runs.register_routes() is False
