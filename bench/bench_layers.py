"""Layer quality and speed against exact ground truth (issue 3 targets).

Clips: the effects fixture (additive glow over a talking character, a 1.7x-wide pan with a
walking character and a screen aura, a rotating magic circle over a standing character) and
the sample episode fixture (pans, holds, two-shots, close-ups). Every frame's character
coverage, effect layers and background are known exactly (re-rendered without compression);
the layers are computed from the H.264 video, as the pipeline sees it.

Per shot, the kept frames are the first frame of each distinct drawing (what clean_frames keeps);
flash, impact and transition frames are left out, as clean_frames drops them.

Prints, per clip and segmentation prior: character IoU and boundary F (2 px), effect alpha MAE
(whole frame, and over the pixels where either truth or estimate has an effect), recomposition
PSNR, background PSNR under the characters where the plate saw the background (and over all
character pixels, inpainted ones included), consecutive-frame mask IoU on shots whose camera and
characters hold still, and seconds per kept frame at 720p and 1080p (decode + layers + encoding
the output images), beside the decode alone.

    python bench/bench_layers.py [--priors auto,none] [--sizes 1280x720,1920x1080] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anime_assets.vision import decode  # noqa: E402
from anime_assets.vision.layers import LayerConfig, decompose_shot, plate_frame_indices, working_plate  # noqa: E402
from anime_assets.vision.metrics import alpha_mae, boundary_f, flicker_iou, iou, psnr, recompose  # noqa: E402
from anime_assets_tests.fixtures import clips, effects  # noqa: E402

TARGETS = {"iou": 0.95, "boundary_f": 0.85, "alpha_mae": 0.05, "recomp_psnr": 35.0, "bg_psnr": 30.0,
           "static_iou": 0.98, "s_per_frame_1080p": 0.5}


def _no_poses(spec: clips.ClipSpec) -> clips.ClipSpec:
    shots = tuple(dataclasses.replace(s, cels=tuple(clips.Cel(c.frames, ()) for c in s.cels)) for s in spec.shots)
    return dataclasses.replace(spec, name=spec.name + "_background", shots=shots)


class Truth:
    """Exact layers of frame i of a fixture clip."""

    def __init__(self, name: str, size):
        self.name, self.size = name, tuple(size)
        if name == "effects":
            self.gt = effects.effects_clip(size=self.size)
        else:
            self.spec = clips.sample_spec()
            path, self.gt = clips.standard_clips(size=self.size)["sample"]
            self.gt.meta["path"] = str(path)
        self.path = Path(self.gt.meta["path"])

    @functools.lru_cache(maxsize=64)
    def layers(self, i: int):
        """(character coverage (H, W) float32, effect alpha (H, W) float32, background RGB)."""
        if self.name == "effects":
            L = effects.render_layers(i, self.size)
            cov = np.clip(sum(L.masks.values()), 0, 1) if L.masks else np.zeros(self.size[::-1], np.float32)
            fx = np.zeros(self.size[::-1], np.float32)
            for layer in L.effects:
                fx = 1 - (1 - fx) * (1 - layer.rgba[..., 3])
            return cov.astype(np.float32), fx.astype(np.float32), L.background
        _, masks = clips.render_frame(self.spec, i, self.size)
        bg, _ = clips.render_frame(_no_poses(self.spec), i, self.size)
        cov = np.clip(sum(masks.values()), 0, 1) if masks else np.zeros(self.size[::-1], np.float32)
        return cov.astype(np.float32), np.zeros(self.size[::-1], np.float32), bg


def shot_plan(gt, max_kept: int = 24):
    """[(start, end, kept frames, still)] per truth shot; `still`: camera and drawing never change."""
    plan = []
    for si, (a, b) in enumerate(gt.shots):
        seen, kept = set(), []
        for i in range(a, b):
            fr = gt.frames[i]
            if fr.get("kind") != "normal" or fr.get("drawing") is None:
                continue
            if fr["drawing"] not in seen:
                seen.add(fr["drawing"])
                kept.append(i)
        if not kept:
            continue
        normal = [i for i in range(a, b) if gt.frames[i].get("kind") == "normal"]
        cams = {tuple(gt.frames[i].get("camera") or ()) for i in normal}
        chars = {repr([c["bbox"] for c in gt.frames[i]["characters"]]) for i in normal}
        plan.append((a, b, kept[:max_kept], len(cams) == 1 and len(chars) == 1 and bool(gt.frames[a]["characters"])))
    return plan


def _abnormal(gt, a: int, b: int) -> list[int]:
    """Flash / impact / transition frames of a shot (clean_frames drops them; no background shows)."""
    return [i for i in range(a, b) if gt.frames[i].get("kind") != "normal"]


def _nanmean(v):
    v = [x for x in v if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def evaluate(truth: Truth, segment, inpaint, cfg: LayerConfig, episode_plates: bool = True) -> dict:
    """``episode_plates``: shots borrow background from the other shots' plates (as the pipeline
    does within an episode run); False: every shot alone."""
    pts = np.arange(truth.gt.n_frames) / truth.gt.fps
    acc = {k: [] for k in ("iou", "bf", "mae_all", "mae_fx", "recomp", "bg_seen", "bg_lent", "bg_all", "static_iou", "true_static_iou")}
    sq = {k: [0.0, 0] for k in ("bg_seen", "bg_lent", "bg_all")}
    n_kept, seconds = 0, 0.0
    plan, shots = shot_plan(truth.gt), []
    t0 = time.perf_counter()
    for a, b, kept, still in plan:
        if still:  # flicker: every normal frame of a still shot gets its own mask
            kept = [i for i in range(a, b) if truth.gt.frames[i].get("kind") == "normal"][:48]
        frames = decode.read_frames_rgb(truth.path, plate_frame_indices(a, b, kept, cfg.plate_frames, _abnormal(truth.gt, a, b)), pts)
        shots.append((kept, still, frames, working_plate(frames, segment, cfg)))
    seconds += time.perf_counter() - t0
    for n, (kept, still, frames, wp) in enumerate(shots):
        library = [(o[3].plate.image, o[3].plate.seen) for m, o in enumerate(shots) if m != n] if episode_plates else []
        t0 = time.perf_counter()
        res = decompose_shot(frames, kept, segment=segment, inpaint=inpaint, config=cfg, library=library, working=wp)
        seconds += time.perf_counter() - t0
        n_kept += len(kept)
        for L in res.frames:
            cov, fx, bg = truth.layers(L.frame_index)
            acc["iou"].append(iou(L.alpha, cov))
            acc["bf"].append(boundary_f(L.alpha, cov, tol_px=2))
            est_fx = L.effect.rgba[..., 3]
            acc["mae_all"].append(alpha_mae(est_fx, fx))
            region = (fx > 1 / 255) | (est_fx > 1 / 255)
            if region.any():
                acc["mae_fx"].append(alpha_mae(est_fx, fx, region))
            acc["recomp"].append(psnr(recompose(L.background, L.character_rgba(), L.effect.rgba, L.effect.blend),
                                      frames[L.frame_index]))
            under = cov >= 0.5
            lent = L.lent if L.lent is not None else np.zeros_like(L.hole)
            # background under the characters, pooled over all frames (squared errors summed): the
            # issue's target region is what another frame of this shot saw; "lent" is what only
            # another shot of the episode saw; "all" includes the inpainted never-seen pixels
            for key, region in (("bg_seen", under & ~L.hole & ~lent), ("bg_lent", under & lent), ("bg_all", under)):
                d = L.background[region].astype(np.float64) - bg[region].astype(np.float64)
                sq[key][0] += float((d ** 2).sum())
                sq[key][1] += d.size
        if still:
            acc["static_iou"].extend(flicker_iou([L.alpha for L in res.frames]))
            acc["true_static_iou"].extend(flicker_iou([truth.layers(L.frame_index)[0] for L in res.frames]))
    out = {k: _nanmean(v) for k, v in acc.items()}
    for key, (se, count) in sq.items():
        out[key] = 10 * np.log10(255.0 ** 2 / (se / count)) if count and se else (float("inf") if count else float("nan"))
    out["static_iou_min"] = min(acc["static_iou"]) if acc["static_iou"] else float("nan")
    out["kept"] = n_kept
    out["s_per_frame"] = seconds / max(n_kept, 1)
    return out


def speed(size, models, cfg: LayerConfig) -> dict:
    """Seconds per kept frame through the pipeline's own stage (`stages.layers.layer_shots`: seek +
    decode, both passes, the three layers, PNG/JPEG writes, LanceDB rows) on the effects clip at
    `size`, beside the stage's decode alone."""
    import json
    import tempfile
    from types import SimpleNamespace

    from anime_assets.stages import layers as stage
    from anime_assets.storage.media import MediaStore
    from anime_assets.storage.tables import layers_table

    truth = Truth("effects", size)
    pts = np.arange(truth.gt.n_frames) / truth.gt.fps
    with tempfile.TemporaryDirectory() as tmp:
        store, table = MediaStore(Path(tmp) / "media"), layers_table(Path(tmp) / "lancedb")
        targets, n_kept = [], 0
        for k, (a, b, kept, _) in enumerate(shot_plan(truth.gt)):
            bad = set(_abnormal(truth.gt, a, b))
            rows = [{"frame": i, "pts": float(pts[i]), "kept": i in kept, "reason": "flash" if i in bad else None}
                    for i in range(a, b)]
            shot = f"s{k:04d}"
            store.write_bytes("clean_frames", "bench", shot, "frames.json",
                              json.dumps({"start": a, "end": b, "frames": rows}).encode())
            targets.append(("bench", shot))
            n_kept += len(kept)
        index = SimpleNamespace(pts=pts)
        t0 = time.perf_counter()
        for _, shot in targets:  # the stage's decode alone (kept frames + plate frames of each shot)
            a, b, kept, bad = stage.kept_frames(store, "bench", shot)
            decode.read_frames_rgb(truth.path, plate_frame_indices(a, b, kept, cfg.plate_frames, bad), pts)
        t_dec = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = stage.layer_shots(store, table, targets, lambda e: truth.path, lambda e: index, models, cfg)
        total = time.perf_counter() - t0
        assert table.count("bench") == n_kept
    return {"kept": n_kept, "decode": t_dec / n_kept, "total": total / n_kept,
            "shots": [(s["shot"], s["kept"], s["seconds"]) for s in out]}


def _fmt(v, target=None, higher=True):
    if v is None or not np.isfinite(v):
        return "n/a"
    s = f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    if target is not None:
        s += " ok" if (v >= target if higher else v <= target) else " MISS"
    return s


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--priors", default="auto,none", help="segmentation priors to compare (auto, none, ...)")
    ap.add_argument("--sizes", default="1280x720,1920x1080", help="sizes for the speed table")
    ap.add_argument("--clips", default="effects,sample")
    ap.add_argument("--quick", action="store_true", help="quality at 640x360 only, no speed table")
    ap.add_argument("--alone", action="store_true",
                    help="also show every shot decomposed alone (no background borrowed from other shots)")
    args = ap.parse_args(argv)
    from anime_assets.models.inpaint import load_inpainter
    from anime_assets.models.segment import load_segmenter

    inp = load_inpainter("auto")
    cfg = LayerConfig()
    priors = {}
    for name in args.priors.split(","):
        if name == "none":
            priors[name] = (None, "none (motion only)")
        else:
            seg = load_segmenter(name)
            priors[name] = (seg.predict, seg.model_id)
    print(f"inpainting: {inp.model_id}")
    print("\n## Quality at 640x360 (targets: IoU >= 0.95, boundary F >= 0.85, effect alpha MAE <= 0.05, "
          "recomposition >= 35 dB, background >= 30 dB, still-shot consecutive IoU >= 0.98)\n")
    head = ("| clip | prior | episode plates | kept | IoU | boundary F | fx alpha MAE (frame) | fx alpha MAE (fx px) | recomp dB "
            "| bg dB (seen in shot) | bg dB (lent by other shots) | bg dB (all) | still IoU mean/min (truth) | s/frame |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for clip in args.clips.split(","):
        truth = Truth(clip, (640, 360))
        for (name, (seg, model_id)), lend in [(p, e) for p in priors.items() for e in ((True, False) if args.alone else (True,))]:
            r = evaluate(truth, seg, inp.inpaint, cfg, episode_plates=lend)
            print(f"| {clip} | {model_id} | {'yes' if lend else 'no'} | {r['kept']} | {_fmt(r['iou'], TARGETS['iou'])} | "
                  f"{_fmt(r['bf'], TARGETS['boundary_f'])} | {_fmt(r['mae_all'], TARGETS['alpha_mae'], False)} | "
                  f"{_fmt(r['mae_fx'])} | {_fmt(r['recomp'], TARGETS['recomp_psnr'])} | "
                  f"{_fmt(r['bg_seen'], TARGETS['bg_psnr'])} | {_fmt(r['bg_lent'])} | {_fmt(r['bg_all'])} | "
                  f"{_fmt(r['static_iou'], TARGETS['static_iou'])}/{_fmt(r['static_iou_min'])} "
                  f"({_fmt(r['true_static_iou'])}) | {_fmt(r['s_per_frame'])} |", flush=True)
    if args.quick:
        return
    print("\n## Speed: seconds per kept frame through the layer stage, effects clip (3 shots), all three "
          "layers written (target < 0.5 s at 1080p)\n")
    print("| size | prior | kept | stage decode alone | whole stage | vs 0.5 s | per shot (kept, s) |")
    print("|---|---|---|---|---|---|---|")
    from anime_assets.stages.layers import LayerModels

    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        for name, (seg, model_id) in priors.items():
            models = LayerModels(load_segmenter(name) if name != "none" else None, inp)
            r = speed((w, h), models, cfg)
            print(f"| {w}x{h} | {model_id} | {r['kept']} | {r['decode']:.3f} | {r['total']:.3f} | "
                  f"{r['total'] / TARGETS['s_per_frame_1080p']:.2f}x | {r['shots']} |", flush=True)


if __name__ == "__main__":
    main()
