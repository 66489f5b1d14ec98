"""Benchmark: clean-frame selection vs fixture ground truth, and vs ffmpeg's mpdecimate.

    .venv/bin/python bench/bench_clean_frames.py [--size 640x360] [--clips cuts,drawings,sample]

For every standard fixture clip (anime_assets_tests/fixtures/clips.py) it prints:

* drawings  distinct drawings in the ground truth (ids of 'normal' frames)
* kept      frames kept after the per-shot final pass (select_shot_frames)
* lost      truth drawings with no kept frame (target: 0)
* repeat%   kept frames whose drawing was already kept (in the shot) / kept (target <= 10 %)
* junk      kept frames without a drawing (flash, impact, black, transition frames)
* cands     frames the ONLINE tracker marked as candidates (= full-res frames written)
* ms/frame  DrawingTracker.push wall time per frame (analysis images already decoded),
            best of --repeat passes; cpu ms: the same in process CPU time (less sensitive
            to other processes on a busy machine; cv2 may use 2 threads, then it's higher)
* sharp ms  line_art_sharpness per candidate, on the half-resolution luma of the full frame

The baseline row is ffmpeg's own `mpdecimate` filter (default parameters) run with the
ffmpeg binary of imageio-ffmpeg and `showinfo` to list the frames it lets through:
sequential "drop if similar to the previous kept frame" dedup. Its kept frames are
scored with the same truth (no shot-level pass; it has no notion of shots).

Shot boundaries and transition ranges come from the ground truth here; in the pipeline
they come from the shot detector.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from anime_assets.vision.decode import read_analysis, read_frames_bgr  # noqa: E402
from anime_assets.vision.shots import transition_frames  # noqa: E402
from anime_assets.vision.frames import (  # noqa: E402
    CleanFrameParams,
    DrawingTracker,
    line_art_sharpness,
    select_shot_frames,
)


def run_pipeline(path, truth, params: CleanFrameParams | None = None, analysis=None, repeat: int = 1):
    """Online tracker over the whole clip, then the final pass per truth shot.

    The tracker pass is timed `repeat` times (fresh tracker each time); the fastest counts.
    Returns dict(decisions, selections {shot: ShotSelection}, kept, candidates, ms_per_frame, quality).
    """
    a = analysis if analysis is not None else read_analysis(path)
    ms = cpu_ms = float("inf")
    n = max(1, len(a.gray))
    for _ in range(max(1, repeat)):
        push = DrawingTracker(params).push
        t0, c0 = time.perf_counter(), time.process_time()
        decisions = [push(i, g) for i, g in enumerate(a.gray)]
        ms = min(ms, (time.perf_counter() - t0) * 1e3 / n)
        cpu_ms = min(cpu_ms, (time.process_time() - c0) * 1e3 / n)
    cands = [i for i, d in enumerate(decisions) if d.candidate]
    quality = {}
    sharp_s = 0.0
    for i, bgr in read_frames_bgr(path, cands).items():
        g = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        h, w = g.shape
        half = cv2.resize(g, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        t0 = time.perf_counter()
        quality[i] = line_art_sharpness(half)
        sharp_s += time.perf_counter() - t0
    luma = a.gray.reshape(len(a.gray), -1).mean(axis=1)
    trans = transition_frames(truth.boundaries)
    sels, kept = {}, []
    for k, (s, e) in enumerate(truth.shots):
        sig = {i: a.gray[i] for i in cands if s <= i < e}
        sel = select_shot_frames(np.arange(s, e), decisions[s:e], sig, quality, luma[s:e], trans, params)
        sels[k] = sel
        kept += sel.kept
    return dict(decisions=decisions, selections=sels, kept=sorted(kept), candidates=cands,
                ms_per_frame=ms, cpu_ms_per_frame=cpu_ms, quality=quality, analysis=a,
                sharpness_ms=sharp_s * 1e3 / max(1, len(quality)))


def score(truth, kept) -> dict:
    """lost drawings, repeats and junk among `kept` frame indices."""
    fr = truth.frames
    drawings = {f["drawing"] for f in fr if f["kind"] == "normal" and f["drawing"] is not None}
    seen: set = set()
    repeats = junk = 0
    repeat_frames, junk_frames = [], []
    for i in sorted(kept):
        d = fr[i]["drawing"] if fr[i]["kind"] == "normal" else None
        if d is None:
            junk += 1
            junk_frames.append(i)
        elif d in seen:  # ids are never shared between shots: "in the shot" == "in the clip"
            repeats += 1
            repeat_frames.append(i)
        else:
            seen.add(d)
    lost = sorted(drawings - seen)
    n = len(kept)
    return dict(drawings=len(drawings), kept=n, lost=len(lost), lost_ids=lost,
                repeats=repeats, repeat_rate=repeats / n if n else 0.0, junk=junk,
                repeat_frames=repeat_frames, junk_frames=junk_frames)


def mpdecimate_kept(path, fps: float) -> list[int]:
    """Frame indices ffmpeg's mpdecimate (default parameters) lets through."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    cmd = [exe, "-hide_banner", "-nostats", "-i", str(path), "-vf", "mpdecimate,showinfo",
           "-f", "null", "-"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    kept = []
    for m in re.finditer(r"pts_time:\s*([0-9.]+)", out):
        kept.append(int(round(float(m.group(1)) * fps)))
    return kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--clips", default="cuts,drawings,sample",
                    help="standard clip names, and/or 'episode' (a seeded random episode, see --minutes)")
    ap.add_argument("--minutes", type=float, default=2.0, help="length of the 'episode' clip")
    ap.add_argument("--repeat", type=int, default=3, help="time the tracker pass this many times, keep the best")
    ap.add_argument("-v", "--verbose", action="store_true", help="list lost / repeated / junk frames")
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    sys.path.insert(0, str(ROOT))
    from anime_assets_tests.fixtures import clips as fx

    clips = fx.standard_clips(size=(w, h))
    if "episode" in args.clips.split(","):
        ep = fx.cache_dir() / f"episode_{args.minutes:g}min_seed1_{w}x{h}.mp4"
        tp = ep.with_suffix(".truth.json")
        if ep.exists() and tp.exists():
            gt = fx.GroundTruth.load(tp)
        else:
            gt = fx.build_clip(fx.episode_spec(args.minutes, seed=1), ep, size=(w, h))
            gt.save(tp)
        clips["episode"] = (ep, gt)
    hdr = f"{'clip':10s} {'method':12s} {'frames':>6s} {'drawings':>8s} {'kept':>5s} {'lost':>5s} " \
          f"{'repeat%':>8s} {'junk':>5s} {'cands':>6s} {'ms/frame':>9s} {'cpu ms':>7s} {'sharp ms':>9s}"
    print(f"clean frames vs ground truth, clips {w}x{h}")
    print(hdr)
    print("-" * len(hdr))
    for name in args.clips.split(","):
        path, truth = clips[name]
        r = run_pipeline(path, truth, repeat=args.repeat)
        s = score(truth, r["kept"])
        print(f"{name:10s} {'frames.py':12s} {truth.n_frames:6d} {s['drawings']:8d} {s['kept']:5d} {s['lost']:5d} "
              f"{100 * s['repeat_rate']:7.1f}% {s['junk']:5d} {len(r['candidates']):6d} {r['ms_per_frame']:9.3f} {r['cpu_ms_per_frame']:7.3f} "
              f"{r['sharpness_ms']:9.2f}")
        if args.verbose:
            print(f"    lost ids {s['lost_ids']}  repeats {s['repeat_frames']}  junk {s['junk_frames']}")
        t0 = time.perf_counter()
        mk = mpdecimate_kept(path, truth.fps)
        ms = (time.perf_counter() - t0) * 1e3 / truth.n_frames
        b = score(truth, mk)
        print(f"{'':10s} {'mpdecimate':12s} {truth.n_frames:6d} {b['drawings']:8d} {b['kept']:5d} {b['lost']:5d} "
              f"{100 * b['repeat_rate']:7.1f}% {b['junk']:5d} {len(mk):6d} {ms:9.3f}*")
    print("* mpdecimate ms/frame is the whole ffmpeg run (decode included), not comparable to the tracker's.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
