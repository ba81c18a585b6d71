"""Windows: the node pack imports inside ComfyUI, and every node describes itself, with the POSIX-only
modules (`resource`, `fcntl`, `pwd`) unimportable, as on the Windows builds of ComfyUI.

The block runs in a subprocess of its own so that it cannot leak into the other tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_nodes_support import ROOT, comfy_or_skip

pytestmark = pytest.mark.cli

comfy_or_skip()

HERE = Path(__file__).resolve().parent

# Fresh interpreter: block for the pack's modules, import ComfyUI and the pack as ComfyUI does (its entry
# point), import every module of the pack, and ask each listed node for its schema.
_SCRIPT = r"""
import asyncio, importlib, json, pkgutil, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import posix_blocker
from comfy_import import PACK, import_comfy, pack
# only for the pack: ComfyUI's own libraries load their Linux back ends here (see posix_blocker)
posix_blocker.install(only_for=(PACK, "ipadapter_train"))
if not posix_blocker.blocked_for(PACK + ".nodes.probe") or posix_blocker.blocked_for("psutil.probe"):
    raise SystemExit("the block does not work")
import_comfy(cpu=True)
extension = asyncio.run(pack().comfy_entrypoint())
node_classes = asyncio.run(extension.get_node_list())
modules = []
for sub in ("nodes", "ipadapter_train"):
    package = pack(sub)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith("__main__"):  # __main__ runs the CLI when imported
            importlib.import_module(info.name)
            modules.append(info.name[len(PACK) + 1:])
schemas = {}
for cls in node_classes:
    schema = cls.define_schema()
    schemas[schema.node_id] = [i.id for i in schema.inputs]
print("RESULT " + json.dumps({"schemas": schemas, "modules": modules}))
"""


def test_pack_imports_in_comfyui_without_posix_modules():
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, str(HERE), str(HERE.parent)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert sorted(result["schemas"]) == sorted(["IPAdapterTrain_LoadTrainingImages", "IPAdapterTrain_Train",
                                                "IPAdapterTrain_Save", "IPAdapterTrain_Load",
                                                "IPAdapterTrain_Apply", "IPAdapterTrain_Score",
                                                "IPAdapterTrain_Search"])
    assert all(result["schemas"].values())  # every node has inputs
    assert {"nodes.node_train", "nodes.training", "ipadapter_train.training.report", "ipadapter_train.training.memory"} \
        <= set(result["modules"])
