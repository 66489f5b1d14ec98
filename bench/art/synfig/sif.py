"""Reading and editing Synfig .sif documents (the XML the `synfig` CLI renders).

A layer is addressed by its index path: the position of each `<layer>` among the layers of its
canvas, from the root down through inline group canvases, joined with "/" ("1/8" is the 9th
layer inside the 2nd root layer). Descs repeat (pirates has two "Barrel" groups), indices don't.

In a .sif file the first layer of a canvas is the bottom one; each later layer is composited
over the ones before it, and a transform layer (translate, zoom, rotate) moves everything below
it in its canvas.
"""

from __future__ import annotations

import copy
import gzip
import math
import dataclasses
import re
import xml.etree.ElementTree as ET
from pathlib import Path

# Synfig's blend methods (synfig/color.h), the ones used here and in the examples.
BLEND = {0: "composite", 1: "straight", 2: "brighten", 3: "darken", 4: "add", 5: "subtract",
         6: "multiply", 7: "divide", 8: "color", 9: "hue", 10: "saturation", 11: "luminance",
         12: "behind", 13: "onto", 14: "alpha_brighten", 15: "alpha_darken", 16: "screen",
         17: "hard_light", 18: "difference", 19: "alpha_over", 20: "overlay", 21: "straight_onto"}
ALPHA_OVER = 19  # result alpha = (1 - alpha of the layer) * alpha below, colour below kept: a holdout matte

GROUP_TYPES = {"PasteCanvas", "group", "paste_canvas", "switch", "filter_group"}


@dataclasses.dataclass
class LayerInfo:
    path: str
    type: str
    desc: str | None
    active: bool
    amount: float | str | None  # a number, "animated" or None (transform layers have none)
    blend: int | str | None
    n_inside: int  # layers in its inline canvas, all depths (0 when none)
    canvas_ref: str | None  # an exported canvas it pastes (use=":id"), if any
    depth: int


def load(path: str | Path) -> ET.ElementTree:
    """A .sif document, or a gzipped one (.sifz)."""
    if str(path).endswith(".sifz"):
        with gzip.open(path) as f:
            return ET.parse(f)
    return ET.parse(str(path))


def save(tree: ET.ElementTree, path: str | Path) -> None:
    """Write .sif, or gzipped .sifz (synfig renders both; pirates.sif is 24 MB as text)."""
    if str(path).endswith(".sifz"):
        with gzip.open(path, "wb", compresslevel=6) as f:
            tree.write(f, encoding="UTF-8", xml_declaration=True)
    else:
        tree.write(str(path), encoding="UTF-8", xml_declaration=True)


def inline_canvas(layer: ET.Element) -> ET.Element | None:
    for p in layer.findall("param"):
        if p.get("name") == "canvas":
            return p.find("canvas")
    return None


def _param(layer: ET.Element, name: str) -> ET.Element | None:
    for p in layer.findall("param"):
        if p.get("name") == name:
            return p
    return None


def _scalar(layer: ET.Element, name: str, tag: str):
    p = _param(layer, name)
    if p is None:
        return None
    el = p.find(tag)
    if el is None:
        return "animated" if len(p) or p.get("use") else None
    v = el.get("value")
    return float(v) if tag == "real" else int(v)


def walk(root: ET.Element, max_depth: int = 99):
    """Yield (path, depth, layer element) for every layer, depth first, bottom to top."""

    def rec(canvas: ET.Element, prefix: str, depth: int):
        for i, layer in enumerate(canvas.findall("layer")):
            path = f"{prefix}{i}"
            yield path, depth, layer
            sub = inline_canvas(layer)
            if sub is not None and depth < max_depth:
                yield from rec(sub, path + "/", depth + 1)

    yield from rec(root, "", 0)


def info(path: str, depth: int, layer: ET.Element) -> LayerInfo:
    sub = inline_canvas(layer)
    cp = _param(layer, "canvas")
    return LayerInfo(path=path, type=layer.get("type"), desc=layer.get("desc"),
                     active=layer.get("active", "true") == "true",
                     amount=_scalar(layer, "amount", "real"), blend=_scalar(layer, "blend_method", "integer"),
                     n_inside=len(list(sub.iter("layer"))) if sub is not None else 0,
                     canvas_ref=cp.get("use") if cp is not None else None, depth=depth)


def layers(root: ET.Element, max_depth: int = 99) -> list[LayerInfo]:
    return [info(p, d, el) for p, d, el in walk(root, max_depth)]


def get(root: ET.Element, path: str) -> ET.Element:
    canvas, layer = root, None
    for k, part in enumerate(path.split("/")):
        if k:
            canvas = inline_canvas(layer)
            if canvas is None:
                raise KeyError(f"{path}: layer {'/'.join(path.split('/')[:k])} has no inline canvas")
        found = canvas.findall("layer")
        i = int(part)
        if not 0 <= i < len(found):
            raise KeyError(f"{path}: no layer {i} (canvas has {len(found)})")
        layer = found[i]
    return layer


def siblings_above(root: ET.Element, path: str) -> list[str]:
    """Index paths of the layers above `path` in its own canvas and in each enclosing canvas."""
    parts = path.split("/")
    out = []
    for k in range(len(parts)):
        prefix = "/".join(parts[:k])
        canvas = root if k == 0 else inline_canvas(get(root, prefix))
        n = len(canvas.findall("layer"))
        out += [(prefix + "/" if prefix else "") + str(j) for j in range(int(parts[k]) + 1, n)]
    return out


def set_active(layer: ET.Element, active: bool) -> None:
    layer.set("active", "true" if active else "false")


def set_blend(layer: ET.Element, method: int) -> None:
    p = _param(layer, "blend_method")
    if p is None:
        p = ET.SubElement(layer, "param", {"name": "blend_method"})
    for child in list(p):
        p.remove(child)
    p.attrib.pop("use", None)
    ET.SubElement(p, "integer", {"value": str(method)})


def has_blend(layer: ET.Element) -> bool:
    return _param(layer, "blend_method") is not None


# ---- time ---------------------------------------------------------------------------------

def parse_time(text: str, fps: float) -> float:
    """Synfig time strings: "0f", "5s 0f", "2.5s", "1h 2m 3s 4f", or plain seconds."""
    text = (text or "0").strip()
    try:
        return float(text)
    except ValueError:
        pass
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "f": 1.0 / fps}
    parts = re.findall(r"(-?[\d.]+)\s*([hmsf])", text)
    if not parts:
        raise ValueError(f"unreadable synfig time {text!r}")
    return sum(float(v) * scale[u] for v, u in parts)


def canvas_header(root: ET.Element) -> dict:
    fps = float(root.get("fps", "24"))
    vb = [float(v) for v in root.get("view-box").split()]
    return {"width": int(root.get("width")), "height": int(root.get("height")), "fps": fps,
            "view_box": vb, "begin": parse_time(root.get("begin-time", "0f"), fps),
            "end": parse_time(root.get("end-time", "0f"), fps)}


def count_animated(root: ET.Element) -> int:
    """Animated parameters (waypoint lists) and time-driven converters (linear, timeloop) in the
    document; 0 means a still picture."""
    return sum(1 for el in root.iter() if el.tag in ("animated", "linear", "timeloop"))


def set_geometry(root: ET.Element, size: tuple[int, int], view_box: list[float], fps: float,
                 seconds: float) -> None:
    """Output size in pixels, the window of the canvas it shows (tl_x tl_y br_x br_y, units), the
    frame rate and the time range. xres/yres are scaled with the pixel size, so units that
    depend on physical resolution keep their meaning."""
    w0 = int(root.get("width"))
    vb0 = [float(v) for v in root.get("view-box").split()]
    # pixels per unit before and after: keep xres/yres (pixels per metre) in the same ratio
    ppu0 = w0 / abs(vb0[2] - vb0[0])
    ppu1 = size[0] / abs(view_box[2] - view_box[0])
    for key in ("xres", "yres"):
        if root.get(key):
            root.set(key, f"{float(root.get(key)) * ppu1 / ppu0:.6f}")
    root.set("width", str(size[0]))
    root.set("height", str(size[1]))
    root.set("view-box", " ".join(f"{v:.6f}" for v in view_box))
    root.set("fps", f"{fps:.3f}")
    root.set("begin-time", "0s")
    root.set("end-time", f"{seconds:.6f}s")


# ---- motion added to still artwork -------------------------------------------------------

def _vector(parent: ET.Element, xy) -> None:
    v = ET.SubElement(parent, "vector")
    ET.SubElement(v, "x").text = f"{xy[0]:.10f}"
    ET.SubElement(v, "y").text = f"{xy[1]:.10f}"


def _animated_param(layer: ET.Element, name: str, kind: str, keys: list[tuple[float, object]]) -> None:
    p = ET.SubElement(layer, "param", {"name": name})
    if len(keys) == 1:
        (_, value), = keys
        if kind == "vector":
            _vector(p, value)
        else:
            ET.SubElement(p, "real", {"value": f"{value:.10f}"})
        return
    a = ET.SubElement(p, "animated", {"type": kind})
    for t, value in keys:
        w = ET.SubElement(a, "waypoint", {"time": f"{t:.8f}s", "before": "linear", "after": "linear"})
        if kind == "vector":
            _vector(w, value)
        else:
            ET.SubElement(w, "real", {"value": f"{value:.10f}"})


def translate_layer(keys: list[tuple[float, tuple[float, float]]], desc: str) -> ET.Element:
    """A translate layer: moves everything below it in its canvas by origin(t) (units)."""
    el = ET.Element("layer", {"type": "translate", "active": "true", "version": "0.1", "desc": desc})
    _animated_param(el, "origin", "vector", keys)
    return el


def zoom_layer(keys: list[tuple[float, float]], center: tuple[float, float], desc: str) -> ET.Element:
    """A scale layer: scales everything below it about `center` by exp(amount(t))."""
    el = ET.Element("layer", {"type": "zoom", "active": "true", "version": "0.1", "desc": desc})
    _animated_param(el, "amount", "real", keys)
    _animated_param(el, "center", "vector", [(0.0, center)])
    return el


def add_camera(root: ET.Element, keys: list[tuple[float, tuple[float, float], float]]) -> None:
    """A camera over the whole canvas: at time t the canvas point P(t) is shown at the centre of
    the view-box, scaled by s(t). keys: (t, P, s). Two layers are put on top of the root canvas:
    translate by V - P, then scale by s about V, so a point q lands at V + s (q - P)."""
    vb = [float(v) for v in root.get("view-box").split()]
    v = ((vb[0] + vb[2]) / 2, (vb[1] + vb[3]) / 2)

    root.append(translate_layer([(t, (v[0] - p[0], v[1] - p[1])) for t, p, _ in keys], "bench camera pan"))
    root.append(zoom_layer([(t, math.log(s)) for t, _, s in keys], v, "bench camera zoom"))


def add_offset(root: ET.Element, path: str, keys: list[tuple[float, tuple[float, float]]]) -> None:
    """Move one group's content by offset(t): a translate layer on top of its inline canvas."""
    sub = inline_canvas(get(root, path))
    if sub is None:
        raise KeyError(f"{path} has no inline canvas to move")
    sub.append(translate_layer(keys, "bench motion"))


def clone(tree: ET.ElementTree) -> ET.ElementTree:
    return copy.deepcopy(tree)


def encode_gamma(root: ET.Element) -> float:
    """Make the document composite in gamma-encoded (sRGB-like) values instead of linear light.

    Synfig 1.4+ reads colours of documents without gamma-r/g/b attributes as linear and renders
    with gamma 2.2: it blends in linear light and encodes on output, so the PNGs obey
    full = alpha * character + (1 - alpha) * background only in linear light. Here the canvas
    gamma is set to 1 and every colour (layers, gradients, waypoints, exported values) is
    encoded with the old gamma, v -> v ** (1 / gamma): flat colours come out the same, while
    blends, soft edges and gradients are now mixed in the encoded values, the way 2D compositing
    software and this project's metrics combine layers. Returns the gamma that was replaced."""
    g = float(root.get("gamma-r") or 2.2)
    gs = [float(root.get(k) or 2.2) for k in ("gamma-r", "gamma-g", "gamma-b")]
    for el in root.iter("color"):
        for ch, gamma in zip(("r", "g", "b"), gs):
            e = el.find(ch)
            if e is None or gamma == 1.0:
                continue
            x = float(e.text)
            e.text = f"{math.copysign(abs(x) ** (1.0 / gamma), x):.6f}"
    for k in ("gamma-r", "gamma-g", "gamma-b"):
        root.set(k, "1.000000")
    return g
