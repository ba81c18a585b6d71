"""What a client of a real ComfyUI server can make the pack read and write, checked through POST /prompt:
Load Training Images reads only folders inside the server's input folder (absolute paths only when the
server's owner started it with IPADAPTER_TRAIN_ALLOW_ANY_FOLDER=1), and Save refuses a taken name when
the graph is queued, then shows the path it wrote in the node's output (/history). A data.json uploaded
through ComfyUI's own /upload/image cannot make the loader read a file outside its folder. The template
browser gets the shipped workflows under names that say what they do.

No SD models are needed: the graphs end in ComfyUI's own Preview as Text / Preview Image nodes.
"""
from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

from browser_workflow_api import SHIPPED, editor_to_api, load_workflow
from harness import PACK_NAME, ROOT, ComfyServer, status_messages

pytestmark = pytest.mark.server

SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"
OPT_IN = "IPADAPTER_TRAIN_ALLOW_ANY_FOLDER"


def picture_folder(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (50 * i, 120, 200)).save(folder / f"img{i}.png")
    return folder


def load_graph(folder: str = "", path: str = "") -> dict:
    """Load Training Images -> Preview as Text (its report) and Preview Image (its batch)."""
    return {
        "1": {"class_type": "IPAdapterTrain_LoadTrainingImages", "inputs": {"folder": folder, "path": path, "prompt": ""}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def refusal(server: ComfyServer, prompt: dict) -> dict:
    """POST /prompt expecting a validation refusal (HTTP 400); returns the server's answer."""
    try:
        answer = server.request("/prompt", {"prompt": prompt, "client_id": "tests"})
    except urllib.error.HTTPError as err:
        assert err.code == 400, err.code
        return json.loads(err.read())
    pytest.fail(f"the server queued a graph it should refuse: {answer}")


def node_error(answer: dict, node_id: str) -> str:
    """The details of a node's validation errors, joined."""
    return " ".join(e["details"] for e in answer["node_errors"][node_id]["errors"])


def succeeded(server: ComfyServer, prompt: dict) -> dict:
    entry = server.wait(server.queue(prompt), 300)
    assert entry["status"]["status_str"] == "success", status_messages(entry, "execution_error")
    return entry


@pytest.fixture(scope="module")
def layout(comfy):
    """A training folder in input/, a folder beside input/, and a link inside input/ that leads to it."""
    inside = picture_folder(comfy.base / "input" / "ipt_inside", [(96, 80), (96, 80)])
    outside = picture_folder(comfy.base / "ipt_outside", [(72, 72)])
    link = comfy.base / "input" / "ipt_link"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    return {"inside": inside, "outside": outside, "link": link}


def test_a_folder_outside_input_is_refused_when_queued(comfy, layout):
    if os.environ.get(OPT_IN):
        pytest.skip(f"{OPT_IN} is set in this environment, so the server allows any folder")
    options = comfy.object_info()["IPAdapterTrain_LoadTrainingImages"]["input"]["required"]["folder"]
    listed = options[1]["options"] if isinstance(options[0], str) else options[0]
    assert "ipt_inside" in listed and "ipt_link" not in listed  # a link out of input/ is not even offered
    for folder, path in (("", "../ipt_outside"), ("../..", ""), ("", "ipt_inside/../../ipt_outside"),
                         ("ipt_link", ""), ("", "ipt_link")):
        answer = refusal(comfy, load_graph(folder, path))
        assert "not inside ComfyUI's input folder" in node_error(answer, "1"), (folder, path, answer)
    answer = refusal(comfy, load_graph("", str(layout["outside"])))
    assert "Absolute paths are off on this server" in node_error(answer, "1")
    assert f"{OPT_IN}=1" in node_error(answer, "1")


def test_a_folder_inside_input_loads_at_the_images_own_size(comfy, layout):
    entry = succeeded(comfy, load_graph("ipt_inside"))
    report = entry["outputs"]["2"]["text"][0]
    assert "2 image(s) used" in report and "All images are 96x80" in report
    preview = entry["outputs"]["3"]["images"][0]
    with Image.open(comfy.base / preview["type"] / preview["subfolder"] / preview["filename"]) as shown:
        assert shown.size == (96, 80)  # no resize by the loader: Train's resolution is the only size knob


def upload(server: ComfyServer, subfolder: str, name: str, data: bytes) -> dict:
    """POST a file to ComfyUI's own /upload/image into input/<subfolder>, as its web page does (multipart)."""
    boundary = f"----ipt{uuid.uuid4().hex}"
    fields = [("subfolder", subfolder), ("type", "input"), ("overwrite", "true")]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
                    for key, value in fields)
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server.url + "/upload/image", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_an_uploaded_data_json_cannot_make_the_server_read_a_file_outside_the_folder(comfy):
    secret = comfy.base / "ipt_secret.png"  # beside input/, as any file on the machine
    Image.new("RGB", (88, 72), (255, 0, 0)).save(secret)
    good = io.BytesIO()
    Image.new("RGB", (96, 80), (0, 0, 255)).save(good, format="PNG")
    assert upload(comfy, "ipt_upload", "good.png", good.getvalue())["name"] == "good.png"
    entries = [{"image_file": "good.png", "text": "mine"}, {"image_file": "../../ipt_secret.png", "text": "a"},
               {"image_file": str(secret), "text": "b"}]
    upload(comfy, "ipt_upload", "data.json", json.dumps(entries).encode())
    assert (comfy.base / "input" / "ipt_upload" / "data.json").is_file()
    entry = succeeded(comfy, load_graph("ipt_upload"))
    report = entry["outputs"]["2"]["text"][0]
    assert "1 image(s) used" in report and "2 skipped:" in report
    assert "  - ../../ipt_secret.png: leads out of the data set's folder" in report
    assert f"  - {secret}: an absolute path, so it is not read" in report
    previews = entry["outputs"]["3"]["images"]
    assert len(previews) == 1  # what /view serves is the uploaded picture only
    with Image.open(comfy.base / previews[0]["type"] / previews[0]["subfolder"] / previews[0]["filename"]) as shown:
        assert shown.size == (96, 80) and shown.convert("RGB").getpixel((5, 5)) == (0, 0, 255)
    # a list of nothing but outside files: the run is refused, naming them
    upload(comfy, "ipt_upload", "data.json", json.dumps(entries[1:]).encode())
    entry = comfy.wait(comfy.queue(load_graph("ipt_upload")), 120)
    errors = status_messages(entry, "execution_error")
    assert entry["status"]["status_str"] == "error" and "has no usable image" in errors[0]["exception_message"]
    assert "../../ipt_secret.png (leads out of" in errors[0]["exception_message"]


def test_save_refuses_a_taken_name_when_queued_and_shows_the_path_it_wrote(comfy):
    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.adapter.fileformat import save_adapter
    from ipadapter_train.layout import adapter_layers
    from ipadapter_train.models.sd15 import tiny_unet_config

    folder = comfy.base / "models" / "ipadapter"
    folder.mkdir(parents=True, exist_ok=True)
    adapter = IPAdapter.new("base", 768, 768, adapter_layers(tiny_unet_config()))
    save_adapter(adapter.state_dict(), folder / "ipt_source.safetensors")
    graph = {
        "1": {"class_type": "IPAdapterTrain_Load", "inputs": {"adapter_name": "ipt_source.safetensors"}},
        "2": {"class_type": "IPAdapterTrain_Save", "inputs": {"adapter": ["1", 0], "name": "ipt_copy", "overwrite": False}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    target = folder / "ipt_copy.safetensors"
    assert not target.exists()
    entry = succeeded(comfy, graph)
    assert target.is_file()
    assert entry["outputs"]["2"]["text"] == [str(target)]  # the Save node's own output carries the path
    assert entry["outputs"]["3"]["text"] == [str(target)]  # and Preview as Text shows it on the canvas
    before = target.stat().st_mtime_ns
    answer = refusal(comfy, graph)  # the same name again: refused before anything runs
    assert "ipt_copy.safetensors already exists" in node_error(answer, "2") and "overwrite" in node_error(answer, "2")
    assert target.stat().st_mtime_ns == before
    graph["2"]["inputs"]["name"] = "../../escape"
    assert "Cannot save an adapter as '../../escape'" in node_error(refusal(comfy, graph), "2")
    graph["2"]["inputs"].update(name="ipt_copy", overwrite=True)
    graph["1"]["inputs"]["adapter_name"] = "ipt_copy.safetensors"  # a different graph, so nothing is cached
    succeeded(comfy, graph)


@pytest.fixture(scope="module")
def opted_in_server(tmp_path_factory):
    """A second server whose owner allows any folder (the variable set for the server process only)."""
    base = tmp_path_factory.mktemp("comfy-opt-in")
    outside = picture_folder(base / "outside", [(80, 64), (64, 96)])
    (base / "input").mkdir()
    (base / "input" / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(OPT_IN, "1")
        server = ComfyServer(base).start()
    yield server
    server.stop()


def test_the_owners_opt_in_allows_absolute_paths_and_links(opted_in_server):
    entry = succeeded(opted_in_server, load_graph("", str(SAMPLES)))
    assert "5 image(s) used" in entry["outputs"]["2"]["text"][0]
    entry = succeeded(opted_in_server, load_graph("linked"))
    report = entry["outputs"]["2"]["text"][0]
    # different sizes: each scaled to the smallest short side (64) and centre-cropped to one size
    assert "2 image(s) used" in report and "img0.png: 80x64 centre-cropped to 64x64" in report
    preview = entry["outputs"]["3"]["images"][0]
    with Image.open(opted_in_server.base / preview["type"] / preview["subfolder"] / preview["filename"]) as shown:
        assert shown.size == (64, 64)


def test_the_template_browser_lists_the_workflows_by_what_they_do(comfy):
    # what the frontend asks for: the names (its cards show them as title and description), then each file
    assert sorted(comfy.get("/workflow_templates")[PACK_NAME]) == sorted(SHIPPED.values())
    info = comfy.object_info()
    for stem in SHIPPED.values():
        served = comfy.get(f"/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(stem)}.json")
        assert served == load_workflow(stem)
        prompt = editor_to_api(served, info)  # the Note is the editor's own: never sent to the server
        assert {n["class_type"] for n in prompt.values()} <= set(info)
        assert len(prompt) == len(served["nodes"]) - 1
