"""Renders a workflow's thumbnail (same name, .jpg) from its editor-format JSON, with Pillow.

    python tests/comfyui/browser_thumbnails.py workflows/*.json

A clean diagram of the graph as the editor lays it out: node boxes with their titles, socket dots,
widget rows, links coloured by type, a sketch of the loss chart on the Train node and of an image on
the image outputs. Drawn at twice the size and reduced, for smooth lines.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, SS = 960, 600, 2  # output size and supersampling factor
TITLE_H, SLOT_H, WIDGET_H = 30, 20, 24  # the editor's metrics (LiteGraph)
BG, GRID = (24, 24, 26), (36, 36, 40)
NODE_BG, NODE_TITLE, NODE_EDGE = (53, 53, 53), (34, 34, 34), (10, 10, 10)
WIDGET_BG, TEXT = (34, 34, 34), (230, 230, 230)
OWN_NODE_TITLE = (38, 70, 60)  # this pack's nodes stand out
NOTE_TITLE, NOTE_BG, NOTE_TEXT = (68, 51, 34), (102, 85, 51), (235, 225, 200)  # the editor's yellow Note
TYPE_COLOURS = {  # ComfyUI's default dark palette; IPADAPTER_TRAIN is this pack's own
    "MODEL": "#B39DDB", "CLIP": "#FFD500", "VAE": "#FF6E6E", "CLIP_VISION": "#A8DADC",
    "CONDITIONING": "#FFA931", "LATENT": "#FF9CF9", "IMAGE": "#64B5F6", "MASK": "#81C784",
    "IPADAPTER_TRAIN": "#5EEAD4", "STRING": "#9AB39A",
}
DEFAULT_COLOUR = "#99AA99"
DISPLAY_NAMES = {
    "CheckpointLoaderSimple": "Load Checkpoint", "CLIPVisionLoader": "Load CLIP Vision",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)", "EmptyLatentImage": "Empty Latent Image",
    "KSampler": "KSampler", "VAEDecode": "VAE Decode", "SaveImage": "Save Image", "LoadImage": "Load Image",
    "PreviewImage": "Preview Image", "PreviewAny": "Preview as Text",
    "IPAdapterTrain_LoadTrainingImages": "Load Training Images", "IPAdapterTrain_Train": "Train IP-Adapter",
    "IPAdapterTrain_Save": "Save IP-Adapter", "IPAdapterTrain_Load": "Load IP-Adapter",
    "IPAdapterTrain_Apply": "Apply IP-Adapter", "IPAdapterTrain_Score": "Score with CLIP",
    "IPAdapterTrain_Search": "Search IP-Adapter Settings",
}
IMAGE_NODES = {"PreviewImage", "SaveImage", "LoadImage"}
PREVIEW_H = 184  # the Train node's preview grid widget (web/preview_grid.js PREVIEW_HEIGHT) and its gap


def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def _rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def _note_text(draw: ImageDraw.ImageDraw, text: str, at: tuple[float, float], width: float, bottom: float,
               size: int) -> None:
    font = _font(size)
    x, y = at
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" ") + [None]:
            if word is not None and draw.textlength(f"{line} {word}".strip(), font=font) <= width:
                line = f"{line} {word}".strip()
                continue
            if y + size > bottom:
                return
            draw.text((x, y), line, font=font, fill=NOTE_TEXT)
            y += size * 1.3
            line = word or ""


def render(path: Path, out: Path | None = None) -> Path:
    path = Path(path)
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    x0 = min(n["pos"][0] for n in nodes.values())
    y0 = min(n["pos"][1] - TITLE_H for n in nodes.values())
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    margin = 40
    scale = min((WIDTH - 2 * margin) / (x1 - x0), (HEIGHT - 2 * margin) / (y1 - y0)) * SS
    ox = (WIDTH * SS - (x1 - x0) * scale) / 2 - x0 * scale
    oy = (HEIGHT * SS - (y1 - y0) * scale) / 2 - y0 * scale

    def P(x: float, y: float) -> tuple[float, float]:  # noqa: N802 - graph -> image coordinates
        return ox + x * scale, oy + y * scale

    img = Image.new("RGB", (WIDTH * SS, HEIGHT * SS), BG)
    draw = ImageDraw.Draw(img)
    step = max(8, int(40 * scale))
    for gx in range(0, WIDTH * SS, step):
        draw.line([(gx, 0), (gx, HEIGHT * SS)], fill=GRID, width=1)
    for gy in range(0, HEIGHT * SS, step):
        draw.line([(0, gy), (WIDTH * SS, gy)], fill=GRID, width=1)

    def sockets(node):  # inputs drawn as slots: those that are not widgets
        return [i for i in node.get("inputs", []) if not i.get("widget")]

    def in_pos(node, slot):
        names = [i["name"] for i in sockets(node)]
        name = node["inputs"][slot]["name"]
        row = names.index(name) if name in names else 0
        return node["pos"][0], node["pos"][1] + (row + 0.7) * SLOT_H

    def out_pos(node, slot):
        return node["pos"][0] + node["size"][0], node["pos"][1] + (slot + 0.7) * SLOT_H

    # links under the nodes
    for link_id, src, src_slot, dst, dst_slot, type_ in wf["links"]:
        a, b = P(*out_pos(nodes[src], src_slot)), P(*in_pos(nodes[dst], dst_slot))
        dx = max(abs(b[0] - a[0]) * 0.5, 30 * scale)
        pts = []
        for k in range(41):
            t = k / 40
            u = 1 - t
            pts.append((u**3 * a[0] + 3 * u * u * t * (a[0] + dx) + 3 * u * t * t * (b[0] - dx) + t**3 * b[0],
                        u**3 * a[1] + 3 * u * u * t * a[1] + 3 * u * t * t * b[1] + t**3 * b[1]))
        draw.line(pts, fill=_rgb(TYPE_COLOURS.get(type_, DEFAULT_COLOUR)), width=max(2, int(3 * scale)),
                  joint="curve")

    title_font = _font(max(10, int(15 * SS * min(1.0, scale / SS * 1.6))))
    radius = max(2, int(8 * scale))
    for node in nodes.values():
        x, y = node["pos"]
        w, h = node["size"]
        own = node["type"].startswith("IPAdapterTrain_")
        is_note = node["type"] in ("Note", "MarkdownNote")
        draw.rounded_rectangle([P(x, y - TITLE_H), P(x + w, y + h)], radius=radius, fill=NOTE_BG if is_note else NODE_BG,
                               outline=NODE_EDGE, width=max(1, int(scale)))
        draw.rounded_rectangle([P(x, y - TITLE_H), P(x + w, y)], radius=radius,
                               fill=NOTE_TITLE if is_note else OWN_NODE_TITLE if own else NODE_TITLE,
                               corners=(True, True, False, False))
        title = node.get("title") or DISPLAY_NAMES.get(node["type"], node["type"])
        tx, ty = P(x + 10, y - TITLE_H / 2)
        draw.text((tx, ty), _fit(draw, title, title_font, (w - 16) * scale), font=title_font, fill=TEXT, anchor="lm")

        if is_note:  # its text, wrapped to the box, as far as it fits
            _note_text(draw, (node.get("widgets_values") or [""])[0], P(x + 10, y + 8), (w - 20) * scale,
                       P(x, y + h - 6)[1], max(8, int(11 * scale)))
            continue
        ins, outs = sockets(node), node.get("outputs", [])
        dot = max(2, int(4.5 * scale))
        for i, inp in enumerate(ins):
            cx, cy = P(x, y + (i + 0.7) * SLOT_H)
            draw.ellipse([cx - dot, cy - dot, cx + dot, cy + dot], fill=_rgb(TYPE_COLOURS.get(inp["type"], DEFAULT_COLOUR)))
        for i, o in enumerate(outs):
            cx, cy = P(x + w, y + (i + 0.7) * SLOT_H)
            draw.ellipse([cx - dot, cy - dot, cx + dot, cy + dot], fill=_rgb(TYPE_COLOURS.get(o["type"], DEFAULT_COLOUR)))

        wy = y + max(len(ins), len(outs)) * SLOT_H + 6
        n_widgets = len([i for i in node.get("inputs", []) if i.get("widget")])
        n_widgets += sum(1 for v in node.get("widgets_values") or [] if v in ("fixed", "randomize", "increment", "decrement"))
        tall = {"CLIPTextEncode", "PreviewAny"}
        for k in range(n_widgets):
            if node["type"] in tall:
                break
            if wy + WIDGET_H > y + h:
                break
            draw.rounded_rectangle([P(x + 12, wy + 2), P(x + w - 12, wy + WIDGET_H - 4)], radius=max(2, int(9 * scale)),
                                   fill=WIDGET_BG)
            wy += WIDGET_H
        if node["type"] in tall:  # a text box
            draw.rounded_rectangle([P(x + 10, wy + 4), P(x + w - 10, y + h - 8)], radius=max(1, int(4 * scale)),
                                   fill=WIDGET_BG)
        if node["type"] in ("IPAdapterTrain_Train", "IPAdapterTrain_Search"):  # the live chart and the latest grid
            gx0, gy0, gx1, gy1 = x + 12, max(wy + 6, y + h - PREVIEW_H), x + w - 12, y + h - 10
            draw.rectangle([P(gx0, gy0), P(gx1, gy1)], fill=(245, 245, 245))
            cell = min((gx1 - gx0 - 16) / 4, gy1 - gy0 - 16)
            for j, colour in enumerate(((150, 120, 90), (70, 90, 120), (95, 115, 130), (120, 130, 125))):
                left = gx0 + 8 + j * (cell + 2)
                draw.rectangle([P(left, gy0 + 8), P(left + cell - 2, gy0 + 8 + cell)], fill=colour)
            h -= PREVIEW_H
            cx0, cy0, cx1, cy1 = x + 12, max(wy + 6, y + h - 150), x + w - 12, y + h - 10
            draw.rectangle([P(cx0, cy0), P(cx1, cy1)], fill=(30, 30, 30))
            raw, avg, acc = [], [], None
            for k in range(80):
                t = k / 79
                v = 0.85 * (0.12 + 0.88 * 2.718 ** (-4 * t)) + 0.07 * ((k * 37 % 11) / 11 - 0.5)
                acc = v if acc is None else 0.85 * acc + 0.15 * v
                px = cx0 + 6 + t * (cx1 - cx0 - 12)
                raw.append(P(px, cy1 - 6 - v * (cy1 - cy0 - 12)))
                avg.append(P(px, cy1 - 6 - acc * (cy1 - cy0 - 12)))
            draw.line(raw, fill=(80, 120, 190), width=max(1, int(1.5 * scale)))
            draw.line(avg, fill=(255, 176, 64), width=max(2, int(3 * scale)), joint="curve")
        if node["type"] in IMAGE_NODES and h - (wy - y) > 60:  # an image
            top = wy + 6
            side = min(w - 40, y + h - 10 - top)
            ix = x + (w - side) / 2
            draw.rounded_rectangle([P(ix, top), P(ix + side, top + side)], radius=max(1, int(4 * scale)),
                                   fill=(70, 90, 120))
            draw.polygon([P(ix + side * 0.1, top + side * 0.85), P(ix + side * 0.45, top + side * 0.4),
                          P(ix + side * 0.7, top + side * 0.7), P(ix + side * 0.9, top + side * 0.5),
                          P(ix + side * 0.9, top + side * 0.85)], fill=(110, 150, 110))
            r = side * 0.09
            draw.ellipse([P(ix + side * 0.7 - r, top + side * 0.25 - r), P(ix + side * 0.7 + r, top + side * 0.25 + r)],
                         fill=(240, 210, 120))

    out = Path(out) if out else path.with_suffix(".jpg")
    img.resize((WIDTH, HEIGHT), Image.LANCZOS).save(out, "JPEG", quality=88, optimize=True)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(render(Path(arg)))
