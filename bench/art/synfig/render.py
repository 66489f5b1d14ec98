"""Vector animation with exact layer truth, rendered at bench time from Debian's synfig-examples.

    python bench/art/synfig/render.py [--out bench/out/synfig] [--names pirates,macwolfen,prologue_kid]
                                      [--size 640x360] [--seconds S] [--fps F] [--sheet PATH]

For each chosen example the .sif document is rendered by the `synfig` CLI several times with
layers switched off or turned into holdout mattes:

  full/        the frame as the artist composed it (a)
  character/   the character layers alone, RGBA with exact alpha (b): layers below every
               character are switched off, non-character layers above a character are turned into
               holdouts (blend "alpha over": they erase what is below them and add no colour), so
               the alpha is the character's visible coverage in (a), occlusions included
  background/  the frame with the character layers switched off (c)
  instance_<name>/  one figure alone, the same way (only where an example has several)

and the truth is written from them:

  truth/alpha/NNNN.png   uint8 character alpha, from (b)
  truth/ids/NNNN.png     uint8 instance index (0 none, k = manifest's instances[k-1]) where that
                         instance's visible alpha is the largest and >= 0.5
  background/NNNN.png    the background truth (c), RGBA

Before that the document is made fit for it: its colours are re-encoded so that synfig
composites in gamma-encoded values rather than linear light (sif.encode_gamma; then
full = alpha * character + (1 - alpha) * background holds on the PNG values), and every group
that holds both figure and other layers is split into consecutive copies of itself
(split_groups; a holdout inside a group only erases that group's own layers). Still examples
get motion added by this script (a camera move and per-figure sway or slide, as translate and
scale layers); the manifest says which.

Nothing rendered is committed; all of it goes under --out (bench/out/ is git-ignored) and is
reused when a manifest for the same parameters is there.

Needs: `apt-get install -y synfig` (the renderer) and `apt-get download synfig-examples`, which
this script runs itself in the cache folder.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sif  # noqa: E402

CODE_VERSION = 3  # bump when the variants, truth or layer choices change (invalidates caches)
PACKAGE = "synfig-examples"
EXAMPLES_DIR = "usr/share/doc/synfig-examples/examples"
COPYRIGHT = "usr/share/doc/synfig-examples/copyright"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "out" / "synfig"
DEFAULT_NAMES = ("pirates", "macwolfen", "prologue_kid")

# Layers that draw nothing of their own but change what is below them: kept as they are in
# every variant (switching them off or into holdouts would move or recolour the figures).
CONTEXT_TYPES = {"translate", "zoom", "rotate", "stretch", "warp", "twirl", "spherize", "inside_out",
                 "noise_distort", "skeleton_deformation", "curve_warp", "blur", "radial_blur",
                 "colorcorrect", "clamp", "super_sample", "sound", "timeloop", "stroboscope",
                 "free_time", "duplicate", "filter_group", "switch", "skeleton", "halftone2",
                 "halftone3", "luma_key", "chromakey"}
# Blends of a layer that covers what is below it: such a layer above a character is a holdout.
OCCLUDING_BLENDS = {0, 1, 13, 19, 21}


@dataclasses.dataclass(frozen=True)
class Figure:
    """One character: the layers (index paths) that draw it, with the desc each must have."""
    name: str
    layers: tuple[tuple[str, str | None], ...]
    sway: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added motion: amplitude x, y (units), phase (turns)


@dataclasses.dataclass(frozen=True)
class Example:
    name: str
    figures: tuple[Figure, ...]
    seconds: float  # default length
    fps: float
    window: tuple[float, float, float]  # centre x, y and half height (units) of the 16:9 view
    camera: tuple[tuple[float, tuple[float, float], float], ...] = ()  # (t as a fraction of the clip, centre, scale)
    slide: tuple[tuple[float, tuple[float, float]], ...] = ()  # all figures: (t fraction, offset)
    sway_hz: float = 0.5
    notes: str = ""


EXAMPLES: dict[str, Example] = {
    "pirates": Example(
        name="pirates",
        # Still (no animated parameter): six figures on a ship; the boat's rim, cannons, barrels and
        # sails are drawn above parts of them. The thick silhouette outlines are separate layers
        # next to the figure groups; each is given to the figure it traces (1/2, 1/20 and 1/21
        # trace the cannons and the boat's rim: background). The dog's leg is drawn inside the
        # Boat group (1/23/13). Above the whole picture (root layers 2-25) are specular glints
        # and skin-coloured patches on the figures (given to the figure they sit on) and the
        # artist's signature on the hull (19-25, background).
        figures=(
            Figure("captain_skull", (("1/6", None), ("1/7", "Captain Skull"), ("14", "Circle509")), (0.0, 0.05, 0.0)),
            Figure("sheep", (("1/8", "Ash1957 Outline"), ("1/9", "Sheep"), ("17", "Circle512"), ("18", "Circle513")),
                   (0.03, 0.05, 0.35)),
            Figure("ham", (("1/12", "Ash1963 Outline"), ("1/13", "Ash1964 Outline"), ("1/14", "Ash1965 Outline"),
                           ("1/15", "Ash1966 Outline"), ("1/16", "Ash1967 Outline"), ("1/17", "Ham"),
                           ("3", "Circle383"), ("4", "Circle384")),
                   (0.05, 0.04, 0.6)),
            Figure("taco", (("1/18", "Taco"),), (0.06, 0.06, 0.2)),
            Figure("dog", (("1/11", "Dog Outlines"), ("1/19", "Dog"), ("1/23/13", "Dog Leg"),
                           ("5", "Circle385"), ("6", "Circle386"), ("7", "Ash2025 Region"), ("8", "Ash2025 Region"),
                           ("9", "Ash2025 Region"), ("10", "Ash2027 Region"), ("11", "Ash2028 Region"),
                           ("12", "Ash2029 Region"), ("13", "Ash2029 Region")),
                   (0.0, 0.04, 0.8)),
            Figure("dead_heads", (("1/22", "Ash1961 Outline"), ("1/24", "Ash1976 Outline"), ("1/25", "Dead Heads"),
                                  ("2", None)),
                   (0.04, 0.0, 0.5)),
        ),
        seconds=2.0, fps=24.0,
        window=(0.0, 0.0, 2.892379),
        # pan left to right across the crew, slightly zoomed in
        camera=((0.0, (-0.9, 0.15), 1.3), (1.0, (0.9, 0.0), 1.3)),
        notes="still artwork; camera pan and per-figure sway added by this script",
    ),
    "macwolfen": Example(
        name="macwolfen",
        # Still: one large figure (smoke from the cigarette is semi-transparent) over a green
        # sunburst (SolidColor + region). The root translate layer is kept in every variant.
        figures=(Figure("dr_mcwolfen", (("4", "Dr.McWolfen PI"),)),),
        seconds=2.0, fps=24.0,
        window=(0.0, 0.0, 4.0),
        camera=((0.0, (0.0, 0.0), 1.0), (1.0, (0.3, 0.3), 1.15)),
        slide=((0.0, (0.8, 0.0)), (1.0, (-0.4, -0.1))),
        notes="still artwork; slow camera push-in and the figure sliding over the background added by this script",
    ),
    "prologue_kid": Example(
        name="prologue_kid",
        # Animated (1565 animated parameters): a boy standing in profile, idle motion (breathing,
        # scarf, hands) over a procedural parchment (noise, so the 16:9 widening is real
        # background); a "voria.com" text watermark (blend onto) above him.
        figures=(Figure("kid", (("6", "Child Above Water"),)),),
        seconds=5.0, fps=24.0,
        window=(0.0, 0.0, 3.984706),
        notes="native animation, no motion added; view widened to 16:9 (the parchment is procedural)",
    ),
}


# ---- package --------------------------------------------------------------------------------

def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def fetch_package(cache: Path) -> dict:
    """Download the .deb with apt (once), extract it, read version, sha256 and licence."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        if not shutil.which("apt-get"):
            raise RuntimeError("apt-get not found: put synfig-examples_*.deb into " + str(cache))
        try:
            _run(["apt-get", "download", PACKAGE], cwd=cache)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"apt-get download {PACKAGE} failed (run apt-get update?): {e.stderr.strip()}")
        debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    deb = debs[-1]
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    root = cache / f"extracted_{sha[:12]}"
    if not (root / EXAMPLES_DIR).is_dir():
        tmp = cache / f".extract_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _run(["dpkg", "-x", str(deb), str(tmp)])
        tmp.rename(root)
    copyright_text = (root / COPYRIGHT).read_text()
    return {"deb": deb.name, "version": version, "sha256": sha, "root": root,
            "examples_dir": root / EXAMPLES_DIR, "license": examples_license(copyright_text),
            "copyright": copyright_text}


def examples_license(copyright_text: str) -> str:
    """The licence of the `Files: *` stanza of the Debian copyright file (the examples are in it)."""
    for stanza in re.split(r"\n\s*\n", copyright_text):
        if re.search(r"^Files:\s*\*\s*$", stanza, re.M):
            m = re.search(r"^License:\s*(\S+)", stanza, re.M)
            if m:
                return m.group(1)
    raise RuntimeError("no License for 'Files: *' in the synfig-examples copyright file")


def synfig_version() -> str:
    exe = shutil.which("synfig")
    if not exe:
        raise RuntimeError("the synfig renderer is not installed: apt-get install -y synfig")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    m = re.search(r"synfig\s+(\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


# ---- variants ---------------------------------------------------------------------------------

def _tup(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in path.split("/"))


def _relation(a: tuple[int, ...], b: tuple[int, ...]) -> str:
    """How layer a stands to layer b: 'same', 'inside' (a in b), 'contains', 'above' or 'below'."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return "same" if len(a) == len(b) else ("inside" if len(a) > len(b) else "contains")
    i = next(k for k in range(n) if a[k] != b[k])
    return "above" if a[i] > b[i] else "below"


def isolate(root, keep: list[str], log: dict | None = None) -> None:
    """Leave only the kept layers drawing: every other layer below all of them is switched off,
    every other layer above one of them becomes a holdout (alpha over) or, if it does not cover
    what is below it (behind, add, multiply ...), is switched off. Ancestors of kept layers and
    context layers (transforms, filters) stay as they are."""
    kept = [_tup(p) for p in keep]
    log = log if log is not None else {}
    for key, layer in list(disjoint_layers(root, keep)):
        if layer.get("active", "true") != "true":
            continue
        if layer.get("type") in CONTEXT_TYPES:
            log.setdefault("context_kept", []).append(key)
            continue
        if not any(_relation(_tup(key), k) == "above" for k in kept):
            sif.set_active(layer, False)
            log.setdefault("off_below", []).append(key)
            continue
        blend = sif._scalar(layer, "blend_method", "integer")
        if blend in OCCLUDING_BLENDS:
            sif.set_blend(layer, sif.ALPHA_OVER)
            log.setdefault("holdouts", []).append(key)
        else:
            sif.set_active(layer, False)
            log.setdefault("off_above_not_occluding", []).append(f"{key} ({layer.get('type')}, blend {blend})")


def disjoint_layers(root, keep: list[str]):
    """(path, layer) of the outermost layers that neither hold nor are inside a kept layer."""
    kept = [_tup(p) for p in keep]

    def rec(canvas, prefix):
        for i, layer in enumerate(canvas.findall("layer")):
            path = prefix + (i,)
            rel = [_relation(path, k) for k in kept]
            if any(r in ("same", "inside") for r in rel):
                continue
            if any(r == "contains" for r in rel):
                yield from rec(sif.inline_canvas(layer), path)
                continue
            yield "/".join(map(str, path)), layer

    yield from rec(root, ())


def remove(root, drop: list[str]) -> None:
    for p in drop:
        sif.set_active(sif.get(root, p), False)


def _parents(root) -> dict:
    return {id(layer): c for c in root.iter("canvas") for layer in c.findall("layer")}


def _wrap(root, layer, parents: dict):
    """Put a non-group layer into a group of its own (same place), so that it can be moved."""
    if sif.inline_canvas(layer) is not None:
        return layer
    if sif._scalar(layer, "blend_method", "integer") not in (0, None):
        raise ValueError(f"{layer.get('desc')}: only composite layers can be wrapped to move them")
    parent = parents[id(layer)]
    idx = list(parent).index(layer)
    g = sif.ET.Element("layer", {"type": "PasteCanvas", "active": layer.get("active", "true"), "version": "0.1",
                                 "desc": f"bench wrap: {layer.get('desc')}"})
    for name, tag, value in (("amount", "real", "1.0000000000"), ("blend_method", "integer", "0")):
        p = sif.ET.SubElement(g, "param", {"name": name})
        sif.ET.SubElement(p, tag, {"value": value})
    c = sif.ET.SubElement(sif.ET.SubElement(g, "param", {"name": "canvas"}), "canvas")
    parent.remove(layer)
    parent.insert(idx, g)
    c.append(layer)
    parents[id(layer)] = c
    parents[id(g)] = parent
    return g


def split_groups(root, owner: dict) -> list[str]:
    """Split every group that holds layers of more than one owner (a figure, or None for the
    rest) into consecutive shells, each a copy of the group (same parameters) holding one
    owner's run of layers. Composite groups at full opacity are associative, so the picture is
    the same; afterwards every figure layer sits in groups that hold nothing else, and a
    holdout next to it can erase it (inside a group a holdout only erases that group's own
    layers). owner: id(layer) -> figure name for the figure layers. Returns what was split."""
    done = []

    def owners(layer) -> set:
        if id(layer) in owner:
            return {owner[id(layer)]}
        sub = sif.inline_canvas(layer)
        if sub is None:
            return {None}
        out = set()
        for child in sub.findall("layer"):
            out |= owners(child)
        return out or {None}

    def rec(canvas):
        for layer in list(canvas.findall("layer")):
            sub = sif.inline_canvas(layer)
            if sub is None or id(layer) in owner or len(owners(layer)) < 2:
                continue
            rec(sub)
            amount = sif._scalar(layer, "amount", "real")
            blend = sif._scalar(layer, "blend_method", "integer")
            if blend not in (0, None) or amount not in (1.0, None):
                raise ValueError(f"group {layer.get('desc')!r} (blend {blend}, amount {amount}) holds figure and "
                                 "other layers: it cannot be split exactly")
            runs = []
            for child in sub.findall("layer"):
                (o,) = owners(child)
                if runs and runs[-1][0] == o:
                    runs[-1][1].append(child)
                else:
                    runs.append((o, [child]))
            idx = list(canvas).index(layer)
            canvas.remove(layer)
            for k, (o, children) in enumerate(runs):
                shell = sif.ET.Element("layer", dict(layer.attrib))
                shell.set("desc", f"{layer.get('desc')} (bench split {k}: {o or 'background'})")
                for param in layer.findall("param"):
                    if param.get("name") == "canvas":
                        cp = sif.ET.SubElement(shell, "param", dict(param.attrib))
                        c = sif.ET.SubElement(cp, "canvas", dict(sub.attrib))
                        for child in children:
                            c.append(child)
                    else:
                        shell.append(copy.deepcopy(param))
                canvas.insert(idx + k, shell)
            done.append(f"{layer.get('desc')!r} into {len(runs)} groups: {[o or 'background' for o, _ in runs]}")

    rec(root)
    return done


def check_static_order(root, name: str) -> None:
    """The holdouts follow the order of the layers in the file: refuse documents that reorder or
    hide layers at render time (z_depth other than 0 or animated, z_range switched on)."""
    for p in root.iter("param"):
        if p.get("name") == "z_depth":
            r = p.find("real")
            if r is None or float(r.get("value")) != 0.0:
                raise ValueError(f"{name}: a layer has a z_depth that is animated or not 0: layer order is not static")
        elif p.get("name") == "z_range":
            b = p.find("bool")
            if b is None or b.get("value") != "false":
                raise ValueError(f"{name}: a group uses z_range: layer visibility is not static")


def prepare(ex: Example, examples_dir: Path, size: tuple[int, int], fps: float, seconds: float,
            encoded: bool = True, split: bool = True):
    """The example's document at the bench geometry with the added motion, its groups split so
    that figures can be isolated (split_groups), and the index paths of each figure's layers in
    it. Checks the layer choice against the descs it was made for. encoded: composite in
    gamma-encoded values (sif.encode_gamma), so that the layers recombine with the plain "over"."""
    tree = sif.load(examples_dir / f"{ex.name}.sif")
    root = tree.getroot()
    header = sif.canvas_header(root)
    check_static_order(root, ex.name)
    if encoded:
        sif.encode_gamma(root)
    elems = {}
    for fig in ex.figures:
        for path, desc in fig.layers:
            el = sif.get(root, path)
            if desc is not None and el.get("desc") != desc:
                raise RuntimeError(f"{ex.name}: layer {path} is {el.get('desc')!r}, expected {desc!r} "
                                   "(another package version?)")
            elems.setdefault(fig.name, []).append(el)
    owner = {id(el): name for name, els in elems.items() for el in els}
    edits = split_groups(root, owner) if split else []
    n = max(1, int(round(seconds * fps)))
    dur = (n - 1) / fps
    cx, cy, hh = ex.window
    hw = hh * size[0] / size[1]
    sif.set_geometry(root, size, [cx - hw, cy + hh, cx + hw, cy - hh], fps, dur)
    added = []
    # per-figure motion: sway (sine, keys every 1/8 s) plus the shared slide
    steps = max(2, int(math.ceil(dur * 8)) + 1)
    times = [dur * k / (steps - 1) for k in range(steps)] if dur > 0 else [0.0]

    def slide_at(t):
        if not ex.slide:
            return (0.0, 0.0)
        f = t / dur if dur > 0 else 0.0
        ks = ex.slide
        for (f0, o0), (f1, o1) in zip(ks, ks[1:]):
            if f0 <= f <= f1:
                w = (f - f0) / (f1 - f0) if f1 > f0 else 0.0
                return (o0[0] + w * (o1[0] - o0[0]), o0[1] + w * (o1[1] - o0[1]))
        return ks[-1][1] if f > ks[-1][0] else ks[0][1]

    parents = _parents(root)
    for fig in ex.figures:
        ax, ay, ph = fig.sway
        if not (ax or ay or ex.slide):
            continue
        keys = []
        for t in times:
            s = slide_at(t)
            w = 2 * math.pi * (ex.sway_hz * t + ph)
            keys.append((t, (s[0] + ax * math.sin(w), s[1] + ay * math.sin(w + 0.7))))
        wrapped = []
        for el in elems[fig.name]:
            g = _wrap(root, el, parents)
            sif.inline_canvas(g).append(sif.translate_layer(keys, "bench motion"))
            wrapped.append(g)
        elems[fig.name] = wrapped
        added.append(f"{fig.name}: offset (slide {ex.slide or 'none'}, sway {fig.sway[:2]} units at {ex.sway_hz} Hz)")
    if ex.camera:
        cam = [(f * dur, c, s) for f, c, s in ex.camera]
        sif.add_camera(root, cam)
        added.append(f"camera: {list(ex.camera)} (t as a fraction of the clip, centre in units, scale)")
    where = {id(el): p for p, _, el in sif.walk(root)}
    fig_paths = {name: [where[id(el)] for el in els] for name, els in elems.items()}
    return tree, header, n, added, fig_paths, edits


def variants(ex: Example, tree, fig_paths: dict) -> tuple[dict, dict]:
    """name -> document, and what each variant did to the layers."""
    char_paths = [p for f in ex.figures for p in fig_paths[f.name]]
    out, logs = {"full": tree}, {}
    t = sif.clone(tree)
    logs["character"] = {}
    isolate(t.getroot(), char_paths, logs["character"])
    out["character"] = t
    t = sif.clone(tree)
    remove(t.getroot(), char_paths)
    out["background"] = t
    logs["background"] = {"off": char_paths}
    if len(ex.figures) > 1:
        for f in ex.figures:
            t = sif.clone(tree)
            logs[f"instance_{f.name}"] = {}
            isolate(t.getroot(), fig_paths[f.name], logs[f"instance_{f.name}"])
            out[f"instance_{f.name}"] = t
    return out, logs


# ---- rendering ----------------------------------------------------------------------------

def render_sequence(doc: Path, frames_dir: Path, n: int) -> float:
    """Render all frames of a document into frames_dir/NNNN.png; returns wall seconds."""
    tmp = frames_dir.with_name(frames_dir.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    cmd = ["synfig", "-q", str(doc), "-t", "png", "-o", str(tmp / "f.png"), "--sequence-separator", "."]
    if n == 1:
        cmd += ["--time", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"synfig failed on {doc}: {proc.stderr[-2000:]}")
    def frame_no(p: Path) -> int:
        digits = re.findall(r"\d+", p.stem)
        return int(digits[-1]) if digits else 0

    files = sorted(tmp.glob("f*.png"), key=frame_no)
    if len(files) != n:
        raise RuntimeError(f"synfig wrote {len(files)} frames for {doc}, expected {n}: {proc.stderr[-1000:]}")
    for i, f in enumerate(files):
        f.rename(tmp / f"{i:04d}.png")
    shutil.rmtree(frames_dir, ignore_errors=True)
    tmp.rename(frames_dir)
    return wall


def render_frame(doc: Path, png: Path, t: float = 0.0) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(["synfig", "-q", str(doc), "-t", "png", "-o", str(png), "--time", f"{t:.6f}"],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not png.exists():
        raise RuntimeError(f"synfig failed on {doc}: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def load_rgba(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"), dtype=np.float64) / 255.0


def over(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Straight-alpha RGBA fg over bg, returned premultiplied RGB and alpha as RGBA (premultiplied)."""
    fa, ba = fg[..., 3:4], bg[..., 3:4]
    rgb = fg[..., :3] * fa + bg[..., :3] * ba * (1 - fa)
    return np.concatenate([rgb, fa + ba * (1 - fa)], axis=-1)


def premul(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[..., :3] * x[..., 3:4], x[..., 3:4]], axis=-1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def write_truth(d: Path, n: int, instances: list[str]) -> dict:
    """truth/alpha, truth/ids; recomposition and instance-sum checks."""
    (d / "truth" / "alpha").mkdir(parents=True, exist_ok=True)
    if instances:
        (d / "truth" / "ids").mkdir(parents=True, exist_ok=True)
    rec_psnr, rec_err_max, rec_bad, inst_err, inst_bad, opaque, cov, a_psnr = [], [], [], [], [], [], [], []
    for i in range(n):
        name = f"{i:04d}.png"
        a, b, c = (load_rgba(d / v / name) for v in ("full", "character", "background"))
        alpha = np.round(b[..., 3] * 255).astype(np.uint8)
        Image.fromarray(alpha).save(d / "truth" / "alpha" / name)
        comp = over(b, c)
        pa = premul(a)
        rec_psnr.append(psnr(comp[..., :3], pa[..., :3]))
        a_psnr.append(psnr(comp[..., 3], pa[..., 3]))
        rec_err_max.append(float(np.abs(comp - pa).max()))
        rec_bad.append(float((np.abs(comp - pa).max(axis=-1) > 2.5 / 255).mean()))
        opaque.append(float((a[..., 3] > 0.999).mean()))
        cov.append(float(b[..., 3].mean()))
        if instances:
            parts = np.stack([load_rgba(d / f"instance_{k}" / name) for k in instances])
            s = premul(parts).sum(axis=0)
            inst_err.append(float(np.abs(s - premul(b)).max()))
            inst_bad.append(float((np.abs(s - premul(b)).max(axis=-1) > 2.5 / 255).mean()))
            al = parts[..., 3]
            ids = np.where(al.max(axis=0) >= 0.5, al.argmax(axis=0) + 1, 0).astype(np.uint8)
            Image.fromarray(ids).save(d / "truth" / "ids" / name)
    out = {"recompose_psnr_db": {"min": min(rec_psnr), "mean": float(np.mean(rec_psnr))},
           "recompose_alpha_psnr_db": {"min": min(a_psnr), "mean": float(np.mean(a_psnr))},
           "recompose_max_abs_err": max(rec_err_max),
           "recompose_pixels_off_by_more_than_2_of_255_max_fraction": max(rec_bad),
           "full_frame_opaque_fraction_min": min(opaque),
           "character_coverage_mean": float(np.mean(cov))}
    if instances:
        out["instance_sum_vs_character_max_abs_err"] = max(inst_err)
        out["instance_sum_pixels_off_by_more_than_2_of_255_max_fraction"] = max(inst_bad)
    return out


def render_example(name: str, pkg: dict, out_dir: Path, size: tuple[int, int], seconds: float | None,
                   fps: float | None, force: bool = False) -> dict:
    ex = EXAMPLES[name]
    seconds = ex.seconds if seconds is None else seconds
    fps = ex.fps if fps is None else fps
    params = {"example": name, "size": list(size), "seconds": seconds, "fps": fps,
              "package_sha256": pkg["sha256"], "code_version": CODE_VERSION}
    d = out_dir / f"{name}_{size[0]}x{size[1]}_{fps:g}fps_{seconds:g}s"
    mpath = d / "manifest.json"
    if not force and mpath.exists():
        m = json.loads(mpath.read_text())
        if m.get("params") == params and all((d / v / f"{m['frames'] - 1:04d}.png").exists() for v in m["variants"]):
            m["cached"] = True
            return m
    d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(d / "sif", ignore_errors=True)
    tree, header, n, added, fig_paths, edits = prepare(ex, pkg["examples_dir"], size, fps, seconds)
    docs, logs = variants(ex, tree, fig_paths)
    timing = {}
    (d / "sif").mkdir(exist_ok=True)
    for vname, doc in docs.items():
        p = d / "sif" / f"{vname}.sifz"
        sif.save(doc, p)
        wall = render_sequence(p, d / vname, n)
        timing[vname] = {"wall_s": round(wall, 2), "s_per_frame": round(wall / n, 3)}
        print(f"  {name}/{vname}: {n} frames in {wall:.1f} s ({wall / n:.2f} s/frame)", flush=True)
    instances = [f.name for f in ex.figures] if len(ex.figures) > 1 else []
    checks = write_truth(d, n, instances)
    # frame 0 of the document as it was (groups not split; synfig's own linear-light gamma):
    # how far the split and the encoded-gamma compositing move the picture
    full0 = load_rgba(d / "full" / "0000.png")
    for key, kw in (("unsplit", {"split": False}), ("synfig_default_gamma", {"encoded": False})):
        ref_tree = prepare(ex, pkg["examples_dir"], size, fps, seconds, **kw)[0]
        sif.save(ref_tree, d / "sif" / f"full_{key}.sifz")
        render_frame(d / "sif" / f"full_{key}.sifz", d / "sif" / f"full_{key}_0000.png")
        ref = load_rgba(d / "sif" / f"full_{key}_0000.png")
        checks[f"full_vs_{key}_frame0_psnr_db"] = psnr(premul(ref)[..., :3], premul(full0)[..., :3])
    orig = sif.load(pkg["examples_dir"] / f"{name}.sif").getroot()
    char_paths = [p for f in ex.figures for p, _ in f.layers]
    background = [{"path": p, "type": el.get("type"), "desc": el.get("desc")}
                  for p, el in disjoint_layers(orig, char_paths) if el.get("active", "true") == "true"]
    m = {
        "params": params,
        "example": name,
        "source": f"{EXAMPLES_DIR}/{name}.sif",
        "frames": n,
        "size": list(size),
        "fps": fps,
        "seconds": n / fps,
        "source_canvas": {k: header[k] for k in ("width", "height", "fps", "view_box")}
                         | {"end_time_s": header["end"], "animated_params": sif.count_animated(orig)},
        "motion_added": added,
        "notes": ex.notes,
        "layers": {
            "character": [{"instance": f.name,
                           "layers": [{"path": p, "desc": sif.get(orig, p).get("desc")} for p, _ in f.layers]}
                          for f in ex.figures],
            "background": background,
            "split_groups": edits,
            "figure_paths_in_rendered_documents": fig_paths,
            "variants": logs,
        },
        "instances": instances,
        "variants": list(docs),
        "truth": {"alpha": "truth/alpha/NNNN.png (uint8, character alpha from character/)",
                  "ids": "truth/ids/NNNN.png (uint8, 0 none, k = instances[k-1])" if instances else None,
                  "background": "background/NNNN.png (RGBA)",
                  "character_rgba": "character/NNNN.png (straight alpha)",
                  "instance_rgba": "instance_<name>/NNNN.png" if instances else None},
        "checks": checks,
        "timing": timing,
        "render_s_per_frame_all_variants": round(sum(t["wall_s"] for t in timing.values()) / n, 3),
        "package": {"name": PACKAGE, "version": pkg["version"], "deb": pkg["deb"], "sha256": pkg["sha256"]},
        "license": pkg["license"],
        "synfig": synfig_version(),
    }
    mpath.write_text(json.dumps(m, indent=1))
    m["cached"] = False
    return m


def render_examples(out_dir=DEFAULT_OUT, names=DEFAULT_NAMES, size=(640, 360), seconds=None, fps=None,
                    force: bool = False) -> dict:
    """Render the chosen examples (cached by parameters); returns the manifest (also written to
    out_dir/manifest.json, with a copy of the package's copyright file beside it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pkg = fetch_package(out_dir / "package")
    if pkg["license"] != "GPL-2+":
        raise RuntimeError(f"synfig-examples licence is now {pkg['license']!r}, not GPL-2+: check before use")
    (out_dir / "COPYRIGHT-synfig-examples").write_text(pkg["copyright"])
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        raise KeyError(f"no layer choice for {unknown}; known: {sorted(EXAMPLES)}")
    examples = []
    for name in names:
        examples.append(render_example(name, pkg, out_dir, tuple(size), seconds, fps, force))
    manifest = {"source": f"Debian package {PACKAGE} {pkg['version']}", "license": pkg["license"],
                "package": {"name": PACKAGE, "version": pkg["version"], "deb": pkg["deb"], "sha256": pkg["sha256"]},
                "synfig": synfig_version(),
                "examples": [dict(m, dir=f"{m['example']}_{m['size'][0]}x{m['size'][1]}_{m['fps']:g}fps_"
                                       f"{m['params']['seconds']:g}s") for m in examples]}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# ---- looking at it -----------------------------------------------------------------------

def checker(h: int, w: int, cell: int = 12) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    v = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 0.85, 0.6)
    return np.repeat(v[..., None], 3, axis=2)


def contact_sheet(manifest: dict, out_dir, path, frames_per_example: int = 3, width: int = 320) -> Path:
    """Rows of (full frame | character over a checkerboard | background | instance ids) for a
    few frames of each example."""
    out_dir = Path(out_dir)
    rows = []
    for m in manifest["examples"]:
        d = out_dir / m["dir"]
        n = m["frames"]
        picks = sorted({round(k * (n - 1) / max(1, frames_per_example - 1)) for k in range(frames_per_example)})
        for i in picks:
            name = f"{i:04d}.png"
            a, b, c = (load_rgba(d / v / name) for v in ("full", "character", "background"))
            h, w = a.shape[:2]
            cb = checker(h, w)
            tiles = [a[..., :3] * a[..., 3:4] + cb * (1 - a[..., 3:4]),
                     b[..., :3] * b[..., 3:4] + cb * (1 - b[..., 3:4]),
                     c[..., :3] * c[..., 3:4] + cb * (1 - c[..., 3:4])]
            if m["instances"]:
                ids = np.asarray(Image.open(d / "truth" / "ids" / name))
                pal = np.array([[0.1, 0.1, 0.1], [0.9, 0.3, 0.3], [0.3, 0.8, 0.3], [0.35, 0.45, 1.0], [1.0, 0.85, 0.2],
                                [0.85, 0.4, 0.95], [0.3, 0.9, 0.95], [1.0, 0.6, 0.3], [0.6, 0.6, 0.6]])
                pal = pal[np.arange(len(m["instances"]) + 1) % len(pal)]
                tiles.append(pal[ids])
            row = np.concatenate([t for tile in tiles for t in (tile, np.ones((h, 4, 3)))], axis=1)
            img = Image.fromarray((np.clip(row, 0, 1) * 255).astype(np.uint8))
            scale = width / w
            img = img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
            from PIL import ImageDraw

            ImageDraw.Draw(img).text((4, 4), f"{m['example']} frame {i}", fill=(255, 0, 0))
            rows.append(img)
    W = max(r.width for r in rows)
    sheet = Image.new("RGB", (W, sum(r.height + 4 for r in rows)), (40, 40, 40))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--names", default=",".join(DEFAULT_NAMES))
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--seconds", type=float, default=None, help="clip length (default: each example's own)")
    ap.add_argument("--fps", type=float, default=None)
    ap.add_argument("--force", action="store_true", help="render again even if cached")
    ap.add_argument("--sheet", default=None, help="write a contact sheet PNG here")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    m = render_examples(args.out, [n for n in args.names.split(",") if n], (w, h), args.seconds, args.fps, args.force)
    for e in m["examples"]:
        c = e["checks"]
        print(f"{e['example']}: {e['frames']} frames {e['size'][0]}x{e['size'][1]} @ {e['fps']:g} fps"
              f"{' (cached)' if e['cached'] else ''}; character over background vs full: PSNR min "
              f"{c['recompose_psnr_db']['min']:.1f} dB mean {c['recompose_psnr_db']['mean']:.1f} dB; "
              f"{e['render_s_per_frame_all_variants']:.2f} s/frame for {len(e['variants'])} renders")
    if args.sheet:
        print("contact sheet:", contact_sheet(m, args.out, args.sheet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
