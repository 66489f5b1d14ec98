"""Export `Sample`s as a LoRA training folder for kohya-ss sd-scripts or musubi-tuner (issue 5).

Layout (everything under `out_dir`; `<folder>` is `<repeats>_<group>`)::

    img/<folder>/<file>.png       the frame, or the crop around one character instance (PNG: no
                                  second lossy encoding)
    img/<folder>/<file>.txt       the caption: trigger / character name first, then the tags
    mask/<folder>/<file>.png      8-bit loss mask, same name and size as the image: 255 where the
                                  character is (this instance only for an instance sample)
    cache/<folder>/               musubi-tuner only: its latent / text-encoder cache folder
    dataset_config.toml           the trainer's `--dataset_config` (absolute paths by default)
    export.json                   manifest: every sample, its source ids and crop, groups, counts,
                                  and every file the export wrote (size, sha256)
    README.txt                    how to train on it

What the trainers read (learned from the kohya-ss docs; see README.txt written beside the data):

* sd-scripts, `--dataset_config dataset_config.toml`: one `[[datasets]]` (resolution, buckets,
  batch size) with one `[[datasets.subsets]]` per group: `image_dir`, `num_repeats`,
  `keep_tokens`, `caption_extension = ".txt"`.  With a config file sd-scripts takes the repeats
  from `num_repeats`, never from the folder name; the `<repeats>_<group>` folder names are
  there for the other entry point, `--train_data_dir <out>/img`, which parses `N_name`.
* Masked loss, `mask=True`: each subset also names `conditioning_data_dir = <out>/mask/<folder>`;
  sd-scripts pairs mask and image by base name and uses the mask's R channel as the loss weight
  (255 = full weight, 0 = ignored).  Train with `--masked_loss`: only then does sd-scripts accept
  `conditioning_data_dir` on a plain image subset (it is the ControlNet-style subset then, which
  takes no `class_tokens`, so none are written; every image has its caption file anyway).
  `mask="alpha"` instead writes RGBA images whose alpha is the mask and sets `alpha_mask = true`
  per subset (sd-scripts' other masked-loss input; no `mask/` folder, no `--masked_loss` needed).
* musubi-tuner (`layout="musubi"`): `[general]` resolution / caption_extension / batch_size /
  enable_bucket / bucket_no_upscale and one `[[datasets]]` per group with `image_directory`, its
  own `cache_directory` (musubi wants one per dataset) and `num_repeats`.  musubi-tuner has no
  masked loss and reads whole captions (no tag shuffling, so no `keep_tokens`); the masks are
  still written, for trainers that take them.

Repeats (`repeats="auto"`) balance the groups: each group contributes about the same number of
image views per epoch, `repeats_g = max(1, round(target / n_g))` with `target` the largest group's
size (or `target_steps_per_epoch`, a number of views per group and epoch).

export.json (`format = "anime_assets.kohya"`, `format_version = 2`: the first that lists the files
it wrote) holds every sample with its source ids, crop and caption, the groups and counts, and
(written by `anime_assets.export.owned`) the file list that overwriting relies on.

Overwriting (`overwrite=True`) replaces only the files an earlier export wrote and keeps every
file of the user's; a listed file the user changed, or a user file where the new export writes,
refuses it.  The rules and what a crash leaves are `anime_assets.export.owned`'s doc; for this
layout, dataset_config.toml and README.txt are the entry files (gone while a replacement is half
done, so no trainer starts on a mix of old and new).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anime_assets.export import owned
from anime_assets.export.owned import MANIFEST, ExportError
from anime_assets.query import Sample

FORMAT = "anime_assets.kohya"
FORMAT_VERSION = 2  # 2: export.json lists the files it wrote (`files`, `dirs`, `state`)
CONTEXT = 0.15  # share of the instance box's long side added as context on every side
MIN_CROP = 256  # an instance crop is at least this many pixels a side (or the whole frame side)
MAX_ASPECT = 2.0  # an instance crop is never longer than this on one side (when the frame allows)
CONFIG = "dataset_config.toml"
README = "README.txt"
KOHYA = owned.Format(FORMAT, FORMAT_VERSION, listed_since=2, entry_files=(CONFIG, README))

_SAFE = re.compile(r"(?:[^A-Za-z0-9._-]|\.{2,})+")


class MissingSourceError(ExportError, FileNotFoundError):
    """A source file a sample names does not exist."""


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    groups: dict  # group (the folder name after "<repeats>_") -> (count, repeats)
    n_images: int
    n_masks: int
    config_path: Path
    manifest_path: Path | None = None
    layout: str = "sd-scripts"
    views_per_epoch: int = 0
    labels: dict = field(default_factory=dict)  # group -> the label it came from (character name...)


# ------------------------------------------------------------------ names
def safe_name(text: str, fallback: str = "x", max_len: int = 100) -> str:
    """`text` reduced to `[A-Za-z0-9._-]`: every run of other characters or of dots ("..") becomes
    one "_"; no leading or trailing ".", "_", "-" (no "..", no hidden files, nothing that reads as
    an option); never empty."""
    s = _SAFE.sub("_", str(text)).strip("._-")
    s = s[:max_len].rstrip("._-")
    return s or fallback


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`... not in `taken` (compared case-insensitively, as on
    case-insensitive file systems); the result is added to `taken`."""
    cand, k = name, 1
    while cand.lower() in taken:
        k += 1
        cand = f"{name}-{k}"
    taken.add(cand.lower())
    return cand


# ------------------------------------------------------------------ captions
def _token(text: str | None) -> str | None:
    if text is None:
        return None
    t = " ".join(str(text).replace(",", " ").split())
    return t or None


def caption_head(sample: Sample, trigger: str | None = None) -> list[str]:
    """The fixed leading tokens of a caption: the trigger (when given) and the character name."""
    head: list[str] = []
    for t in (_token(trigger), _token(sample.character_name)):
        if t and t.lower() not in {h.lower() for h in head}:
            head.append(t)
    return head


def build_caption(sample: Sample, trigger: str | None = None) -> tuple[str, int]:
    """(caption, n_head): the head tokens first (kohya's `keep_tokens = n_head` keeps them in front
    when the tags are shuffled), then the sample's caption tags and its `tags`, deduplicated
    case-insensitively in their first order."""
    head = caption_head(sample, trigger)
    seen = {h.lower() for h in head}
    tokens = list(head)
    for t in [*(sample.caption or "").split(","), *sample.tags]:
        t = " ".join(str(t).split())
        if t and t.lower() not in seen:
            seen.add(t.lower())
            tokens.append(t)
    return ", ".join(tokens), len(head)


# ------------------------------------------------------------------ pixels
def _need(path, sample: Sample) -> Path:
    p = Path(path)
    if not p.is_file():
        raise MissingSourceError(f"missing source file {p} (sample {sample.id})")
    return p


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_alpha(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if "A" in im.getbands():
            return np.asarray(im.getchannel("A"))
        return np.asarray(im.convert("L"))  # a layer without alpha: its luminance is the coverage


def _read_ids(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    return a[..., 0] if a.ndim == 3 else a


def _fit(a: np.ndarray, hw: tuple[int, int], what: Path) -> np.ndarray:
    if a.shape[:2] != hw:
        raise ExportError(f"{what} is {a.shape[1]}x{a.shape[0]}, its frame is {hw[1]}x{hw[0]}")
    return a


def instance_crop_box(box, frame_w: int, frame_h: int, context: float = CONTEXT,
                      min_crop: int = MIN_CROP, max_aspect: float = MAX_ASPECT) -> tuple[int, int, int, int]:
    """A crop of the frame around `box` (x0, y0, x1, y1; x1/y1 exclusive): a square of the box's long
    side plus `context` of it on every side (at least `min_crop`), centred on the box, shifted to
    stay inside the frame and cut where the frame is smaller; a side of the box longer than
    `max_aspect` x the other side keeps the crop's aspect at most `max_aspect`.  Never padded:
    padding would teach the trainer bars that are not in the show."""
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, y0 = max(0, min(x0, frame_w - 1)), max(0, min(y0, frame_h - 1))
    x1, y1 = max(x0 + 1, min(x1, frame_w)), max(y0 + 1, min(y1, frame_h))
    bw, bh = x1 - x0, y1 - y0
    side = max(bw, bh) * (1.0 + 2.0 * context)
    side = max(side, min_crop)
    cw, ch = side, side
    if bh > max_aspect * bw:  # a very tall box: the crop may be tall too, up to max_aspect
        ch = bh * (1.0 + 2.0 * context)
        cw = max(ch / max_aspect, bw * (1.0 + 2.0 * context), min(min_crop, ch))
    elif bw > max_aspect * bh:
        cw = bw * (1.0 + 2.0 * context)
        ch = max(cw / max_aspect, bh * (1.0 + 2.0 * context), min(min_crop, cw))
    cw, ch = int(round(min(cw, frame_w))), int(round(min(ch, frame_h)))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(round(cx - cw / 2.0))
    top = int(round(cy - ch / 2.0))
    left = max(0, min(left, frame_w - cw))
    top = max(0, min(top, frame_h - ch))
    return left, top, left + cw, top + ch


def _bbox(m: np.ndarray):
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def needed_paths(sample: Sample, crop: str, mask: bool) -> list[Path]:
    """The source files reading `sample` touches (for checking them all before writing anything)."""
    paths = [sample.image_path]
    if mask:
        paths += [p for p in (sample.character_path,) if p is not None]
        if sample.instance_id is not None and sample.instance_mask_path is not None:
            paths.append(sample.instance_mask_path)
    elif crop == "instance" and sample.instance_id is not None and sample.box is None:
        if sample.instance_mask_path is not None:
            paths.append(sample.instance_mask_path)
        elif sample.character_path is not None:
            paths.append(sample.character_path)
    return [Path(p) for p in paths]


@dataclass
class Rendered:
    rgb: np.ndarray  # HxWx3 uint8, the crop
    mask: np.ndarray | None  # HxW uint8 (255 = the character), None when not asked for
    crop_box: tuple[int, int, int, int]  # in frame pixels (x0, y0, x1, y1)
    frame_size: tuple[int, int]  # (width, height)


def render_sample(sample: Sample, crop: str = "instance", mask: bool = True,
                  context: float = CONTEXT) -> Rendered:
    """Read one sample's pixels: the frame (or the crop around its instance) and its loss mask.

    Mask: for an instance sample, the character layer's alpha where the instance mask holds this
    instance (`instance_mask == instance_id`) and 0 elsewhere (other characters are excluded); for
    a frame sample, the whole character layer's alpha.  A sample without a character layer uses
    its instance mask alone (255 inside); an instance sample without an instance mask falls back
    to the whole layer's alpha (every character); one without any layer gets an all-255 mask
    (plain loss).  Every file read is checked first; a missing one raises `MissingSourceError`."""
    if crop not in ("instance", "frame"):
        raise ExportError(f"crop must be 'instance' or 'frame', not {crop!r}")
    need = needed_paths(sample, crop, mask)
    for p in need:
        _need(p, sample)
    rgb = _read_rgb(Path(sample.image_path))
    h, w = rgb.shape[:2]
    inst = alpha = None
    if sample.instance_mask_path is not None and Path(sample.instance_mask_path) in need:
        ids = _fit(_read_ids(Path(sample.instance_mask_path)), (h, w), Path(sample.instance_mask_path))
        inst = ids == int(sample.instance_id)
    if sample.character_path is not None and Path(sample.character_path) in need:
        alpha = _fit(_read_alpha(Path(sample.character_path)), (h, w), Path(sample.character_path))

    box = (0, 0, w, h)
    if crop == "instance" and sample.instance_id is not None:
        src = sample.box
        if src is None and inst is not None:
            src = _bbox(inst)
        if src is None and alpha is not None:
            src = _bbox(alpha >= 128)
        if src is not None:
            box = instance_crop_box(src, w, h, context)
    x0, y0, x1, y1 = box
    m = None
    if mask:
        if alpha is not None and inst is not None:
            m = np.where(inst, alpha, 0).astype(np.uint8)
        elif alpha is not None:
            m = alpha.astype(np.uint8)
        elif inst is not None:
            m = inst.astype(np.uint8) * 255
        else:
            m = np.full((h, w), 255, np.uint8)
        m = np.ascontiguousarray(m[y0:y1, x0:x1])
    return Rendered(np.ascontiguousarray(rgb[y0:y1, x0:x1]), m, box, (w, h))


# ------------------------------------------------------------------ grouping and repeats
def group_label(sample: Sample, group_by, default: str) -> str:
    if callable(group_by):
        label = group_by(sample)
    elif group_by == "character":
        label = sample.character_name or sample.character_id
    elif group_by == "episode":
        label = sample.episode
    elif group_by in (None, "none"):
        label = None
    else:
        raise ExportError(f"group_by must be 'character', 'episode', 'none' or a function, not {group_by!r}")
    return str(label) if label not in (None, "") else default


def balanced_repeats(counts: dict[str, int], repeats="auto",
                     target_steps_per_epoch: int | None = None) -> dict[str, int]:
    """Repeats per group: an int for all, or "auto": max(1, round(target / n)) with `target` the
    largest group's size or `target_steps_per_epoch` (views per group and epoch).  Halves round up."""
    if repeats != "auto":
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ExportError(f"repeats must be 'auto' or an int >= 1, not {repeats!r}")
        return {g: repeats for g in counts}
    if target_steps_per_epoch is not None and (
            isinstance(target_steps_per_epoch, bool) or not isinstance(target_steps_per_epoch, int)
            or target_steps_per_epoch < 1):
        raise ExportError(f"target_steps_per_epoch must be an int >= 1, not {target_steps_per_epoch!r}")
    target = target_steps_per_epoch or max(counts.values(), default=1)
    return {g: max(1, int(math.floor(target / n + 0.5))) for g, n in counts.items()}


# ------------------------------------------------------------------ TOML (written by hand)
def _q(s) -> str:
    """A TOML basic string (JSON's escapes are all valid TOML escapes; DEL is escaped too)."""
    return json.dumps(str(s), ensure_ascii=False).replace("\x7f", "\\u007f")


def _v(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_v(x) for x in v) + "]"
    return _q(v)


def _table(header: str, items: dict, indent: str = "") -> list[str]:
    lines = [f"{indent}{header}"]
    lines += [f"{indent}{k} = {_v(v)}" for k, v in items.items() if v is not None]
    return lines + [""]


def _bucket_range(res: tuple[int, int], step: int = 64) -> tuple[int, int]:
    lo = max(step, (min(res) // 4) // step * step)
    hi = max(lo, int(math.ceil(max(res) * 2 / step)) * step)
    return lo, hi


def _sd_scripts_config(groups, general, mask_mode, res, batch_size) -> str:
    lo, hi = _bucket_range(res)
    lines = ["# kohya-ss sd-scripts dataset config written by anime_assets (see README.txt)",
             "# train_network.py --dataset_config THIS" + (" --masked_loss" if mask_mode == "dir" else ""), ""]
    lines += _table("[general]", general)
    lines += _table("[[datasets]]", {
        "resolution": res[0] if res[0] == res[1] else [res[0], res[1]],
        "batch_size": batch_size, "enable_bucket": True, "bucket_no_upscale": True,
        "bucket_reso_steps": 64, "min_bucket_reso": lo, "max_bucket_reso": hi})
    for g in groups:
        lines += _table("[[datasets.subsets]]", {
            "image_dir": g["image_dir"], "num_repeats": g["repeats"], "keep_tokens": g["keep_tokens"],
            "conditioning_data_dir": g["mask_dir"] if mask_mode == "dir" else None,
            "alpha_mask": True if mask_mode == "alpha" else None}, indent="  ")
    return "\n".join(lines)


def _musubi_config(groups, res, batch_size) -> str:
    lines = ["# musubi-tuner dataset config written by anime_assets (see README.txt)", ""]
    lines += _table("[general]", {"resolution": [res[0], res[1]], "caption_extension": ".txt",
                                  "batch_size": batch_size, "enable_bucket": True, "bucket_no_upscale": True})
    for g in groups:
        lines += _table("[[datasets]]", {"image_directory": g["image_dir"], "cache_directory": g["cache_dir"],
                                         "num_repeats": g["repeats"]})
    return "\n".join(lines)


# ------------------------------------------------------------------ the export
def _resolution(resolution) -> tuple[int, int]:
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        res = (resolution, resolution)
    else:
        res = tuple(int(v) for v in resolution)
    if len(res) != 2 or min(res) < 64:
        raise ExportError(f"resolution must be an int or (width, height) of at least 64, not {resolution!r}")
    return res


def _write_png(path: Path, a: np.ndarray) -> None:
    from PIL import Image

    mode = {2: "L", 3: "RGBA" if a.ndim == 3 and a.shape[2] == 4 else "RGB"}[a.ndim]
    Image.fromarray(a, mode).save(path, format="PNG", compress_level=4)


def export_kohya(samples: Iterable[Sample], out_dir, *, name: str | None = None,
                 group_by: str | Callable[[Sample], str | None] = "character", repeats="auto",
                 target_steps_per_epoch: int | None = None, crop: str = "instance", mask: bool | str = True,
                 trigger: str | None = None, layout: str = "sd-scripts", overwrite: bool = False,
                 resolution: int | Sequence[int] = 1024, batch_size: int = 1, absolute_paths: bool = True,
                 context: float = CONTEXT, manifest_extra: dict | None = None) -> ExportReport:
    """Write `samples` as a kohya-ss sd-scripts (or musubi-tuner, `layout="musubi"`) training folder.

    group_by: "character" (name, else id, else `name`), "episode", "none" (one group `name`) or a
      function of the sample.  `name` (default: the folder's name) names the export and the group
      of samples without one.
    repeats: "auto" (balance the groups, see the module doc) or an int for every group.
    crop: "instance" (instance samples: a bucket-friendly crop around the instance with context;
      frame samples stay whole) or "frame".
    mask: True (8-bit masks in `mask/`, `conditioning_data_dir` in the sd-scripts config, train with
      `--masked_loss`), "alpha" (RGBA images, `alpha_mask = true`), or False.
    trigger: a token put first in every caption (then the character name); `keep_tokens` counts them.
    resolution / batch_size: the config's training resolution (int or (width, height)) and batch.
    absolute_paths: the config names absolute paths of the final `out_dir` (what the trainers
      resolve most safely: sd-scripts resolves relative ones against the working directory); False
      writes them relative to `out_dir` (run the trainer from inside it).
    overwrite: replace an earlier export in a non-empty `out_dir`: only the files its export.json
      lists are replaced or removed, every other file there is kept (see `anime_assets.export.owned`;
      a listed file changed since, or a user file where this export writes, refuses it).
    manifest_extra: more facts for export.json (the query, the table versions...).
    """
    if layout not in ("sd-scripts", "musubi"):
        raise ExportError(f"layout must be 'sd-scripts' or 'musubi', not {layout!r}")
    if crop not in ("instance", "frame"):
        raise ExportError(f"crop must be 'instance' or 'frame', not {crop!r}")
    if mask not in (True, False, "alpha"):
        raise ExportError(f"mask must be True, False or 'alpha', not {mask!r}")
    mask_mode = "alpha" if mask == "alpha" else ("dir" if mask else None)
    if mask_mode == "alpha" and layout == "musubi":
        raise ExportError("musubi-tuner has no alpha-mask loss: use mask=True (masks in mask/) or mask=False")
    res = _resolution(resolution)
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.name in ("", ".", ".."):
        raise ExportError(f"not an export folder name: {out_dir}")
    prev = owned.check_target(out_dir, KOHYA, overwrite, digests=False)  # refuse early; digests come before replacing

    samples = list(samples)
    if not samples:
        raise ExportError("no samples to export")
    default = name or out_dir.name
    seen_ids: set[str] = set()
    todo: list[Sample] = []
    for s in samples:  # the same sample twice is one image, not two
        if s.id not in seen_ids:
            seen_ids.add(s.id)
            todo.append(s)
    for s in todo:  # every source file, before anything is written
        for p in needed_paths(s, crop, mask_mode is not None):
            _need(p, s)

    # groups: label -> folder group name (sanitised, unique), in first-seen order
    labels: dict[str, str] = {}
    taken: set[str] = set()
    members: dict[str, list[Sample]] = {}
    for s in todo:
        label = group_label(s, group_by, default)
        if label not in labels:
            labels[label] = _unique(safe_name(label, "group", 60), taken)
        members.setdefault(labels[label], []).append(s)
    reps = balanced_repeats({g: len(m) for g, m in members.items()}, repeats, target_steps_per_epoch)
    names: dict[str, dict[str, str]] = {}  # group -> sample id -> file name (without extension)
    for g, members_g in members.items():
        taken_g: set[str] = set()
        names[g] = {s.id: _unique(safe_name(s.id, "sample", 120), taken_g) for s in members_g}
    if prev is not None:  # a user file where this export writes: refused now, not after rendering it all
        plan_dirs = {"img", *(f"img/{reps[g]}_{g}" for g in members)}
        plan_files = {CONFIG, README, *(f"img/{reps[g]}_{g}/{n}.{ext}" for g in members for n in names[g].values()
                                        for ext in ("png", "txt"))}
        if mask_mode == "dir":
            plan_dirs |= {"mask", *(f"mask/{reps[g]}_{g}" for g in members)}
            plan_files |= {f"mask/{reps[g]}_{g}/{n}.png" for g in members for n in names[g].values()}
        if layout == "musubi":
            plan_dirs |= {"cache", *(f"cache/{reps[g]}_{g}" for g in members)}
        owned.check_plan(out_dir, prev, plan_files, plan_dirs)

    with owned.staging(out_dir) as tmp:
        rows, group_rows, n_masks = [], [], 0
        for g, members_g in members.items():
            folder = f"{reps[g]}_{g}"
            img_dir = tmp / "img" / folder
            img_dir.mkdir(parents=True)
            mask_dir = tmp / "mask" / folder
            if mask_mode == "dir":
                mask_dir.mkdir(parents=True)
            keep = None  # keep_tokens: the head every caption of the group has
            for s in members_g:
                fname = names[g][s.id]
                r = render_sample(s, crop, mask_mode is not None, context)
                cap, n_head = build_caption(s, trigger)
                keep = n_head if keep is None else min(keep, n_head)
                if mask_mode == "alpha":
                    _write_png(img_dir / f"{fname}.png", np.dstack([r.rgb, r.mask]))
                else:
                    _write_png(img_dir / f"{fname}.png", r.rgb)
                if mask_mode == "dir":
                    _write_png(mask_dir / f"{fname}.png", r.mask)
                    n_masks += 1
                elif mask_mode == "alpha":
                    n_masks += 1
                (img_dir / f"{fname}.txt").write_text(cap + "\n", encoding="utf-8")
                rows.append({
                    "id": s.id, "group": g, "file": f"img/{folder}/{fname}.png",
                    "mask": f"mask/{folder}/{fname}.png" if mask_mode == "dir" else None,
                    "caption": cap, "episode": s.episode, "shot": s.shot, "frame_index": s.frame_index,
                    "instance_id": s.instance_id, "character_id": s.character_id,
                    "character_name": s.character_name, "outfit": s.outfit, "expression": s.expression,
                    "quality": s.quality, "repeat_kind": s.repeat_kind, "source_image": str(s.image_path),
                    "crop_box": list(r.crop_box), "frame_size": list(r.frame_size),
                    "size": [r.rgb.shape[1], r.rgb.shape[0]],
                })
            final = (lambda p: str(out_dir / p)) if absolute_paths else (lambda p: p)
            group_rows.append({
                "group": g, "label": next(lbl for lbl, gg in labels.items() if gg == g), "folder": folder,
                "count": len(members_g), "repeats": reps[g], "views_per_epoch": len(members_g) * reps[g],
                "keep_tokens": keep, "image_dir": final(f"img/{folder}"),
                "mask_dir": final(f"mask/{folder}") if mask_mode == "dir" else None,
                "cache_dir": final(f"cache/{folder}") if layout == "musubi" else None,
            })
            if layout == "musubi":
                (tmp / "cache" / folder).mkdir(parents=True)

        if layout == "musubi":
            text = _musubi_config(group_rows, res, batch_size)
        else:
            general = {"caption_extension": ".txt", "shuffle_caption": True}
            text = _sd_scripts_config(group_rows, general, mask_mode, res, batch_size)
        (tmp / CONFIG).write_text(text, encoding="utf-8")

        views = sum(gr["views_per_epoch"] for gr in group_rows)
        manifest = {
            "name": default, "layout": layout,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "crop": crop, "mask": {"dir": "mask-dir", "alpha": "alpha", None: None}[mask_mode],
            "trigger": trigger, "resolution": list(res), "batch_size": batch_size,
            "paths": "absolute" if absolute_paths else "relative to this folder",
            "config": CONFIG, "n_images": len(rows), "n_masks": n_masks, "views_per_epoch": views,
            "groups": group_rows, "samples": rows, "extra": manifest_extra or {},
        }
        (tmp / README).write_text(_readme(manifest, out_dir), encoding="utf-8")
    # export.json gets the format, these facts and the list of every file written (what overwriting relies on)
    owned.put_in_place(tmp, out_dir, KOHYA, manifest, overwrite)
    return ExportReport(
        out_dir=out_dir, groups={gr["group"]: (gr["count"], gr["repeats"]) for gr in group_rows},
        n_images=len(rows), n_masks=n_masks, config_path=out_dir / CONFIG, manifest_path=out_dir / MANIFEST,
        layout=layout, views_per_epoch=views, labels={gr["group"]: gr["label"] for gr in group_rows})


def _readme(m: dict, out_dir: Path) -> str:
    groups = "\n".join(f"  {g['folder']:<40} {g['count']:>6} images x {g['repeats']:>3} repeats = "
                       f"{g['views_per_epoch']:>6} views/epoch   ({g['label']})" for g in m["groups"])
    cfg = out_dir / CONFIG
    if m["layout"] == "musubi":
        how = (f"musubi-tuner: cache latents and text-encoder outputs with the model's cache scripts, then\n"
               f"train, each with --dataset_config {cfg}\n"
               f"(one [[datasets]] per group: image_directory, cache_directory, num_repeats).\n"
               f"musubi-tuner has no masked loss; the masks in mask/ are for trainers that take them.")
    else:
        mask_line = {
            "mask-dir": "  --masked_loss   (the masks: conditioning_data_dir = mask/<folder>, same file names;\n"
                        "                   white = learn, black = ignore; sd-scripts reads their R channel)",
            "alpha": "  (the masks are the images' alpha: alpha_mask = true in every subset)",
            None: "  (no masks)"}[m["mask"]]
        how = (f"kohya-ss sd-scripts:\n  accelerate launch train_network.py --dataset_config {cfg} ...\n{mask_line}\n"
               f"Captions: shuffle_caption with keep_tokens = the leading trigger / character tokens.\n"
               f"Without the config, --train_data_dir {out_dir / 'img'} reads the repeats and class tokens\n"
               f"from the <repeats>_<group> folder names (and no masks).")
    return (f"anime_assets export '{m['name']}' ({m['created']})\n\n"
            f"img/<repeats>_<group>/<id>.png + .txt  the images (PNG) and captions\n"
            + ("mask/<repeats>_<group>/<id>.png      8-bit loss masks, same names and sizes\n"
               if m["mask"] == "mask-dir" else "")
            + f"{CONFIG:<37}the trainer's dataset config (paths: {m['paths']})\n"
            f"{MANIFEST:<37}every sample with its source ids, crop and caption, and every file\n"
            f"{'':<37}this export wrote: overwriting it replaces only those (files you add are kept;\n"
            f"{'':<37}edit a copy of a listed file, or the overwrite refuses)\n\n"
            f"Groups (repeats balance the groups' views per epoch):\n{groups}\n"
            f"Total: {m['n_images']} images, {m['views_per_epoch']} views per epoch, crop={m['crop']}, "
            f"resolution={m['resolution'][0]}x{m['resolution'][1]}\n\n{how}\n")
