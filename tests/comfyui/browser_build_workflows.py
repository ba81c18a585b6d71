"""Builds the shipped workflows/*.json in the real ComfyUI frontend, then renders their thumbnails.

    python tests/comfyui/browser_build_workflows.py            # against this checkout's nodes
    python tests/comfyui/browser_build_workflows.py --pack DIR # against another pack folder (same node ids)

Each graph below is created node by node in the page (LiteGraph.createNode, connect, widget values),
laid out in columns from the nodes' real sizes, and saved with `app.graph.serialize()`: exactly what
the editor's Save writes, so the files stay in the format the frontend of this ComfyUI expects.
Widget values are defaults for users (512 px for SD1.5, 1024 px for SDXL, the checkpoint and ViT-H file
names people download); tests override them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_server as bs  # noqa: E402
import browser_thumbnails  # noqa: E402
from browser_workflow_api import SHIPPED  # noqa: E402

WORKFLOWS_DIR = bs.ROOT / "workflows"
CKPT = "v1-5-pruned-emaonly-fp16.safetensors"  # the file of ComfyUI's own default workflow and SD1.5 templates
CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
POSITIVE = "a photo of a cat sitting in a sunlit garden, best quality"
NEGATIVE = "blurry, low quality, watermark, text"
CLIP_VISION_BIGG = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"
SCORER = "clip-vit-large-patch14.safetensors"
CKPT_SDXL = "sd_xl_base_1.0.safetensors"

# The public files' download links, declared the way ComfyUI's frontend (1.32.9) reads them: a loader node's
# properties.models, [{name, url, directory}], for the file its widget selects. When a template opens, the frontend
# lists those missing from their models folder in its "Missing Models" dialog, with a Download button (only links
# under https://huggingface.co/ or https://civitai.com/ to .safetensors/.sft files). A browser saves the download
# under the link's own name: the CLIP vision and scorer files must then be renamed (the Notes say so). The
# adapters this pack trains have no link, so they are not declared. These are the links ComfyUI's own templates
# use for the checkpoints, the IP-Adapter authors' image encoder and OpenAI's CLIP ViT-L/14.
HF = "https://huggingface.co"
DOWNLOADS = {
    CKPT: ("checkpoints", f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/{CKPT}"),
    CKPT_SDXL: ("checkpoints", f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/{CKPT_SDXL}"),
    CLIP_VISION: ("clip_vision", f"{HF}/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors"),
    SCORER: ("clip_scorers", f"{HF}/openai/clip-vit-large-patch14/resolve/main/model.safetensors"),
}


def declared(file_name: str) -> list[dict]:
    """A loader's properties.models entry for a public file (the frontend's missing-models convention)."""
    directory, url = DOWNLOADS[file_name]
    return [{"name": file_name, "url": url, "directory": directory}]


# What each template needs, on a Note in the graph (the public file names; README "In ComfyUI" lists the same).
CPU_TEMPLATE = SHIPPED["train_ip_adapter_cpu"]
NEED_FIRST = ("Before you press Run: pick your files in each loader. When this template opens, ComfyUI lists the "
              "public model files below that are not in your models folders (Missing Models), with download links.")
NEED_ON_CPU = (f"On a CPU? Open the template \"{CPU_TEMPLATE}\" instead: it is set to finish in minutes on 2 cores.")
NEED_CHECKPOINT = (f"Checkpoint (Load Checkpoint): a Stable Diffusion 1.5 single file in models/checkpoints, "
                   f"e.g. {CKPT} (the one ComfyUI's own default workflow uses).")
NEED_CLIP_VISION = (f"CLIP vision (Load CLIP Vision), in models/clip_vision: the encoder the adapter is trained with. "
                    f"The public ip-adapter_sd15 and ip-adapter-plus_sd15 use {CLIP_VISION} (OpenCLIP ViT-H/14): "
                    f"use it to train or fine-tune for them; its link downloads model.safetensors, rename it "
                    f"{CLIP_VISION}. {CLIP_VISION_BIGG} goes with the *_vit-G adapters (ip-adapter_sd15_vit-G).")
NEED_CHECKPOINT_SDXL = (f"Checkpoint (Load Checkpoint): an SDXL single file in models/checkpoints, e.g. {CKPT_SDXL} "
                        "(its two text encoders and its VAE are inside).")
NEED_CLIP_VISION_SDXL = (f"CLIP vision (Load CLIP Vision), in models/clip_vision: the encoder the adapter is trained with. "
                         f"The public ip-adapter_sdxl_vit-h and ip-adapter-plus_sdxl_vit-h use {CLIP_VISION} "
                         f"(OpenCLIP ViT-H/14): use it to train or fine-tune for them; its link downloads "
                         f"model.safetensors, rename it {CLIP_VISION}. {CLIP_VISION_BIGG} goes with ip-adapter_sdxl.")
NEED_IMAGES = ("Training images: put 5 or more jpg/png/webp/bmp files in a folder under ComfyUI's input folder, "
               "input/<folder>, each with a same-named .txt caption (or type one prompt on the node), then pick "
               "<folder> in Load Training Images (press R to refresh the list). Any size: Train IP-Adapter's "
               "resolution sets the training size.")
NEED_IMAGES_SDXL = (NEED_IMAGES + " Here resolution 0 trains at SDXL's 1024 px and buckets keeps wide and tall "
                    "pictures whole; if the GPU runs out of memory, turn on gradient_checkpointing.")
NEED_ADAPTER = ("Adapter (Load IP-Adapter), in models/ipadapter: my_adapter.safetensors from the training template "
                "(your own file: it has no download link, so Missing Models does not list it), or the public "
                "ip-adapter_sd15.safetensors / ip-adapter-plus_sd15.safetensors (with the ViT-H CLIP vision file above).")
NEED_REFERENCE = "Reference image: upload a picture in the \"Reference image\" node (Load Image)."
NEED_SCORER = (f"Scorer (Score with CLIP): a full CLIP model (vision and text towers) in models/clip_scorers: "
               f"openai/clip-vit-large-patch14 as a transformers folder (config.json and model.safetensors in "
               f"models/clip_scorers/clip-vit-large-patch14/) or its model.safetensors alone, renamed {SCORER}.")
# The CPU quick run: every widget set for minutes on 2 CPU cores (README "In ComfyUI" gives the estimate).
CPU_TRAIN = {"steps": 20, "resolution": 256, "validation": "quick", "preview_every": -1}
CPU_LATENT, CPU_SAMPLER_STEPS = 256, 12
NEED_CPU_SETTINGS = (f"Set for a first run on a CPU: {CPU_TRAIN['steps']} steps at {CPU_TRAIN['resolution']} px, "
                     "previews off (preview_every -1; 0 turns them on), quick validation, then one "
                     f"{CPU_LATENT} px image in {CPU_SAMPLER_STEPS} sampling steps with the new adapter, your first "
                     "training image as the reference. About 3 minutes on 2 CPU cores with full-size SD1.5 "
                     "(163 s measured, BENCHMARKS.md \"CPU template\"). For a real adapter, raise steps and "
                     "resolution or use "
                     f"\"{SHIPPED['train_ip_adapter']}\" on a GPU.")


# The search template: a few trials sized for a GPU, judged by the held-out loss until a scorer is picked.
SEARCH = {"trials": 6, "steps_low": 100, "steps_high": 400, "learning_rate_low": 1e-5, "learning_rate_high": 1e-3,
          "variant": "search", "batch_sizes": "1, 2", "resolution": 512, "seed": 42,
          "control_after_generate": "fixed", "preview_every": 100, "scorer": "none"}
NEED_SEARCH = ("Search IP-Adapter Settings trains one adapter per trial (6 trials of 100 to 400 steps: about as long "
               "as 6 Train runs, less where weak trials are stopped early at a preview round) and returns the best "
               "one. Without a scorer the trials are judged by the held-out validation loss; for CLIP scores, put a "
               "full CLIP model in models/clip_scorers (as for Score with CLIP, e.g. "
               f"{SCORER}) and pick it in scorer. The trials' runs and search.html are in "
               "output/ipadapter_train/search-<date>-<time>-node<id>/.")


def need(*items: str, saved: str | None = None, first: str | None = NEED_ON_CPU) -> str:
    """A Note's text: the opening lines, numbered needs, and where the result goes."""
    lines = [NEED_FIRST] + ([first] if first else []) + [""] + [f"{i}. {item}" for i, item in enumerate(items, 1)]
    if saved:
        lines += ["", (f"The adapter is saved as models/ipadapter/{saved}.safetensors (change name on Save IP-Adapter; "
                       "an existing name is refused when you press Run unless overwrite is on). \"Saved to\" shows the path.")]
    return "\n".join(lines)


# Output order of the pack's nodes (nodes/CONTRACT.md). A V3 output's slot name is its display_name, or
# its type when it has none, so links to these nodes fall back to the index.
CONTRACT_OUTPUTS = {
    "IPAdapterTrain_LoadTrainingImages": ["images", "captions", "report", "names"],
    "IPAdapterTrain_Train": ["adapter", "loss_plot", "report", "previews"],
    "IPAdapterTrain_Save": ["path"],
    "IPAdapterTrain_Load": ["adapter"],
    "IPAdapterTrain_Apply": ["model"],
    "IPAdapterTrain_Score": ["scores", "table"],
    "IPAdapterTrain_Search": ["adapter", "table", "report"],
}


def N(key, type_, col, widgets=None, title=None, width=None, height=None, models=None):  # noqa: N802 - a table row
    return {"key": key, "type": type_, "col": col, "widgets": widgets or {}, "title": title, "width": width,
            "height": height, "models": models}


def checkpoint(col=0, name=CKPT):
    return N("ckpt", "CheckpointLoaderSimple", col, {"ckpt_name": name}, models=declared(name))


def clip_vision(col=0):
    return N("clipv", "CLIPVisionLoader", col, {"clip_name": CLIP_VISION}, models=declared(CLIP_VISION))


def training_images(col=0):
    return N("images", "IPAdapterTrain_LoadTrainingImages", col, {"folder": "", "path": "", "prompt": ""})


def note(text, col=0, width=420, height=None):
    lines = sum(1 + len(line) // 66 for line in text.split("\n"))  # the wrapped lines at this width
    return N("note", "Note", col, {"text": text}, title="What this workflow needs", width=width,
             height=height or 40 + 12 * lines)


def saved_to(col):
    return N("saved", "PreviewAny", col, title="Saved to", width=300, height=110)


def train(col=1, **widgets):
    return N("train", "IPAdapterTrain_Train", col,
             {"variant": "base", "steps": 50, "learning_rate": 1e-4, "batch_size": 1, "resolution": 512,
              "seed": 42, "control_after_generate": "fixed", "checkpoint_every": 0, **widgets}, width=360)


def generation(col_apply, col_sampler, col_out, model_from, ref_title="Reference image", size=512, steps=30,
               ref=None):
    """Apply -> KSampler -> VAEDecode with prompts and a latent; the reference is a Load Image unless `ref` is given."""
    nodes = [
        ref or N("ref", "LoadImage", 0, {"image": "example.png"}, title=ref_title),
        N("apply", "IPAdapterTrain_Apply", col_apply, {"weight": 1.0, "start_at": 0.0, "end_at": 1.0}),
        N("pos", "CLIPTextEncode", col_apply, {"text": POSITIVE}, title="Positive prompt", width=340),
        N("neg", "CLIPTextEncode", col_apply, {"text": NEGATIVE}, title="Negative prompt", width=340),
        N("latent", "EmptyLatentImage", col_apply, {"width": size, "height": size, "batch_size": 1}),
        N("sampler", "KSampler", col_sampler,
          {"seed": 42, "control_after_generate": "fixed", "steps": steps, "cfg": 7.5, "sampler_name": "dpmpp_2m",
           "scheduler": "karras", "denoise": 1.0}),
        N("decode", "VAEDecode", col_out, width=200),
    ]
    links = [
        ("ckpt", "MODEL", "apply", "model"), (model_from, "adapter", "apply", "adapter"),
        ("clipv", "CLIP_VISION", "apply", "clip_vision"), ("ref", "IMAGE", "apply", "image"),
        ("ckpt", "CLIP", "pos", "clip"), ("ckpt", "CLIP", "neg", "clip"),
        ("apply", "model", "sampler", "model"), ("pos", "CONDITIONING", "sampler", "positive"),
        ("neg", "CONDITIONING", "sampler", "negative"), ("latent", "LATENT", "sampler", "latent_image"),
        ("sampler", "LATENT", "decode", "samples"), ("ckpt", "VAE", "decode", "vae"),
    ]
    return nodes, links


def specs() -> dict[str, dict]:
    train_nodes = [note(need(NEED_CHECKPOINT, NEED_CLIP_VISION, NEED_IMAGES, saved="my_adapter")),
                   checkpoint(), clip_vision(), training_images(), train(),
                   N("save", "IPAdapterTrain_Save", 2, {"name": "my_adapter", "overwrite": False}),
                   saved_to(2),
                   # no "Loss curve" preview of loss_plot: the Train node's live chart shows the loss once
                   N("report", "PreviewAny", 2, title="Training report", width=360)]
    train_links = [("ckpt", "MODEL", "train", "model"), ("ckpt", "CLIP", "train", "clip"),
                   ("ckpt", "VAE", "train", "vae"), ("clipv", "CLIP_VISION", "train", "clip_vision"),
                   ("images", "images", "train", "images"), ("images", "captions", "train", "captions"),
                   ("train", "adapter", "save", "adapter"), ("save", "path", "saved", "source"),
                   ("images", "names", "train", "image_names"),  # the previews and the report name the files
                   ("train", "report", "report", "source")]

    gen_nodes, gen_links = generation(1, 2, 3, "load")
    apply_nodes = [note(need(NEED_CHECKPOINT, NEED_CLIP_VISION, NEED_ADAPTER, NEED_REFERENCE, first=None)),
                   checkpoint(), clip_vision(), N("load", "IPAdapterTrain_Load", 0,
                                                  {"adapter_name": "my_adapter.safetensors"})]
    apply_nodes += gen_nodes + [N("out", "SaveImage", 3, {"filename_prefix": "ipadapter_train/apply"}, width=320, height=360)]
    apply_links = gen_links + [("decode", "IMAGE", "out", "images")]

    tta_gen, tta_gen_links = generation(2, 3, 4, "train")
    tta_name = "my_adapter_then_applied"  # not the training template's name: running both never collides
    tta_nodes = [note(need(NEED_CHECKPOINT, NEED_CLIP_VISION, NEED_IMAGES, NEED_REFERENCE, saved=tta_name)),
                 checkpoint(), clip_vision(), training_images(), train(col=1),
                 N("save", "IPAdapterTrain_Save", 1, {"name": tta_name, "overwrite": False}), saved_to(1)]
    tta_nodes += tta_gen + [N("out", "SaveImage", 4, {"filename_prefix": "ipadapter_train/trained"}, width=320, height=360)]
    tta_links = train_links[:9] + tta_gen_links + [("decode", "IMAGE", "out", "images")]

    score_gen, score_gen_links = generation(1, 2, 2, "load")
    score_nodes = [note(need(NEED_CHECKPOINT, NEED_CLIP_VISION, NEED_ADAPTER, NEED_REFERENCE, NEED_SCORER, first=None)),
                   checkpoint(), clip_vision(), N("load", "IPAdapterTrain_Load", 0,
                                                  {"adapter_name": "my_adapter.safetensors"})]
    score_nodes += score_gen + [
        N("score", "IPAdapterTrain_Score", 3, {"scorer": SCORER, "prompt": POSITIVE}, width=340,
          models=declared(SCORER)),
        N("out", "SaveImage", 3, {"filename_prefix": "ipadapter_train/scored"}, width=320, height=360),
        N("scores", "PreviewAny", 4, title="Scores", width=360),
        N("table", "PreviewImage", 4, title="Score table", width=360, height=200),
    ]
    score_links = score_gen_links + [("decode", "IMAGE", "score", "images"), ("ref", "IMAGE", "score", "reference"),
                                     ("decode", "IMAGE", "out", "images"), ("score", "scores", "scores", "source"),
                                     ("score", "table", "table", "images")]
    # SDXL: train at the model's own size (resolution 0 = 1024 px) with buckets, then sample at 1024 px
    sdxl_gen, sdxl_gen_links = generation(2, 3, 4, "train", size=1024)
    sdxl_name = "my_sdxl_adapter"  # apart from the SD1.5 templates' names: an SDXL adapter is another file
    sdxl_nodes = [note(need(NEED_CHECKPOINT_SDXL, NEED_CLIP_VISION_SDXL, NEED_IMAGES_SDXL, NEED_REFERENCE, saved=sdxl_name,
                            first=NEED_ON_CPU.replace(" instead", " (SD1.5) instead"))),
                  checkpoint(name=CKPT_SDXL), clip_vision(), training_images(),
                  train(col=1, resolution=0, buckets=True),
                  N("save", "IPAdapterTrain_Save", 1, {"name": sdxl_name, "overwrite": False}), saved_to(1)]
    sdxl_nodes += sdxl_gen + [N("out", "PreviewImage", 4, width=320, height=360)]
    sdxl_links = train_links[:9] + sdxl_gen_links + [("decode", "IMAGE", "out", "images")]
    # The CPU quick run: train and use at small sizes, the reference taken from the training images (no upload)
    cpu_ref = N("ref", "ImageFromBatch", 1, {"batch_index": 0, "length": 1}, title="Reference: first training image")
    cpu_gen, cpu_gen_links = generation(2, 3, 4, "train", size=CPU_LATENT, steps=CPU_SAMPLER_STEPS, ref=cpu_ref)
    cpu_name = "my_cpu_first_adapter"
    cpu_nodes = [note(need(NEED_CHECKPOINT, NEED_CLIP_VISION, NEED_IMAGES, saved=cpu_name, first=NEED_CPU_SETTINGS)),
                 checkpoint(), clip_vision(), training_images(), train(col=1, **CPU_TRAIN),
                 N("save", "IPAdapterTrain_Save", 1, {"name": cpu_name, "overwrite": False}), saved_to(1)]
    cpu_nodes += cpu_gen + [N("out", "SaveImage", 4, {"filename_prefix": "ipadapter_train/cpu_first_run"},
                              width=320, height=360)]
    cpu_links = train_links[:9] + [("images", "images", "ref", "image")] + cpu_gen_links + [("decode", "IMAGE", "out", "images")]
    # The search: the training template's inputs into Search IP-Adapter Settings; Save the best trial's adapter
    search_name = "my_searched_adapter"
    search_nodes = [note(need(NEED_CHECKPOINT, NEED_CLIP_VISION, NEED_IMAGES, NEED_SEARCH, saved=search_name)),
                    checkpoint(), clip_vision(), training_images(),
                    N("search", "IPAdapterTrain_Search", 1, dict(SEARCH), width=380),
                    N("save", "IPAdapterTrain_Save", 2, {"name": search_name, "overwrite": False}), saved_to(2),
                    N("table", "PreviewImage", 2, title="Trials", width=420, height=260),
                    N("report", "PreviewAny", 2, title="Search report", width=420)]
    search_links = [(a, out, "search", inp) for a, out, b, inp in train_links if b == "train"]
    search_links += [("search", "adapter", "save", "adapter"), ("save", "path", "saved", "source"),
                     ("search", "table", "table", "images"), ("search", "report", "report", "source")]
    return {
        "train_ip_adapter": {"nodes": train_nodes, "links": train_links, "outputs": CONTRACT_OUTPUTS},
        "train_ip_adapter_cpu": {"nodes": cpu_nodes, "links": cpu_links, "outputs": CONTRACT_OUTPUTS},
        "apply_ip_adapter": {"nodes": apply_nodes, "links": apply_links, "outputs": CONTRACT_OUTPUTS},
        "train_then_apply": {"nodes": tta_nodes, "links": tta_links, "outputs": CONTRACT_OUTPUTS},
        "score": {"nodes": score_nodes, "links": score_links, "outputs": CONTRACT_OUTPUTS},
        "train_ip_adapter_sdxl": {"nodes": sdxl_nodes, "links": sdxl_links, "outputs": CONTRACT_OUTPUTS},
        "search_ip_adapter": {"nodes": search_nodes, "links": search_links, "outputs": CONTRACT_OUTPUTS},
    }


BUILD_JS = """
async (spec) => {
  const app = window.comfyAPI.app.app;
  const LG = window.LiteGraph;
  app.graph.clear();
  const made = {};
  for (const n of spec.nodes) {
    const node = LG.createNode(n.type);
    if (!node) throw new Error('unknown node type ' + n.type);
    if (n.title) node.title = n.title;
    app.graph.add(node);
    for (const [name, value] of Object.entries(n.widgets)) {
      const w = (node.widgets || []).find((w) => w.name === name);
      if (!w) throw new Error(n.type + ' has no widget ' + name);
      w.value = value;
    }
    if (n.models) node.properties.models = n.models;  // the frontend's missing-models convention
    made[n.key] = node;
  }
  for (const [a, out, b, inp] of spec.links) {
    const A = made[a], B = made[b];
    let o = A.outputs.findIndex((s) => s.name === out);
    if (o < 0) o = (spec.outputs[A.type] || []).indexOf(out);
    const i = B.inputs.findIndex((s) => s.name === inp);
    if (o < 0 || i < 0) throw new Error(`no slot ${a}.${out} -> ${b}.${inp}`);
    if (!A.connect(o, B, i)) throw new Error(`could not connect ${a}.${out} -> ${b}.${inp}`);
  }
  // Columns left to right, nodes stacked in spec order, from their real sizes.
  const TITLE = LG.NODE_TITLE_HEIGHT, GAP_X = 60, GAP_Y = 40 + TITLE;
  const cols = {};
  for (const n of spec.nodes) {
    const node = made[n.key];
    const size = node.computeSize();
    node.setSize([Math.ceil(Math.max(node.size[0], size[0], n.width || 0)),
                  Math.ceil(Math.max(node.size[1], size[1], n.height || 0))]);
    (cols[n.col] ??= []).push(node);
  }
  let x = 0;
  for (const c of Object.keys(cols).map(Number).sort((p, q) => p - q)) {
    let y = 0, w = 0;
    for (const node of cols[c]) {
      node.pos = [Math.round(x), Math.round(y + TITLE)];
      y += node.size[1] + GAP_Y;
      w = Math.max(w, node.size[0]);
    }
    x += w + GAP_X;
  }
  const data = app.graph.serialize();
  // Open centred with a margin, at a zoom that shows the whole graph on a 1600x900 screen.
  const xs = data.nodes.flatMap((n) => [n.pos[0], n.pos[0] + n.size[0]]);
  const ys = data.nodes.flatMap((n) => [n.pos[1] - TITLE, n.pos[1] + n.size[1]]);
  const gw = Math.max(...xs) - Math.min(...xs), gh = Math.max(...ys) - Math.min(...ys);
  const scale = Math.min(1, 1450 / gw, 720 / gh);
  data.extra = { ...(data.extra || {}), ds: { scale: +scale.toFixed(3),
    offset: [+(80 / scale - Math.min(...xs)).toFixed(1), +(120 / scale - Math.min(...ys)).toFixed(1)] } };
  return JSON.stringify(data);
}
"""


def build(out_dir: Path, pack: Path, only: list[str] | None = None) -> list[Path]:
    """Build the shipped workflows (or those named in `only`) into `out_dir`, with their thumbnails."""
    written = []
    with tempfile.TemporaryDirectory(prefix="ipt-build-") as tmp:
        tmp = Path(tmp)
        with bs.comfy_server(tmp / "base", {}, pack=pack) as srv, bs.chromium() as page:
            bs.open_comfy(page, srv)
            for name, spec in specs().items():
                if only and name not in only:
                    continue
                data = json.loads(page.evaluate(BUILD_JS, spec))
                data["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ipadapter-train/workflows/{name}"))
                path = out_dir / f"{SHIPPED[name]}.json"  # the file name is what the template browser shows
                path.write_text(json.dumps(data, indent=2) + "\n")
                written.append(path)
                print("wrote", path)
    for path in written:
        print("wrote", browser_thumbnails.render(path))
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path, default=bs.ROOT, help="pack folder to load (default: this checkout)")
    ap.add_argument("--out", type=Path, default=WORKFLOWS_DIR)
    ap.add_argument("--only", nargs="+", choices=sorted(SHIPPED), help="build only these workflows (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out, args.pack.resolve(), args.only)


if __name__ == "__main__":
    main()
