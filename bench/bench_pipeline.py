"""Pipeline benchmark: decode + clean frames against ffmpeg's own decode, and a whole episode through the graph.

Prints a table of ratios against baselines measured in the same run:

* ffmpeg -f null decode of the same file (imageio-ffmpeg's ffmpeg, all threads) = 1.00x;
* our decode loop alone;
* the selection pass (decode + analysis views + online drawing tracker, no image writes);
* the full frame_index stage (also converts and writes every candidate frame as JPEG);
* decode + clean frames end to end: frame_index stage + shot detection + per-shot selection.

With --full it also ingests a whole generated episode (default 24 min, 1080p) through the
real Dagster graph (`anime-assets ingest` in a subprocess with a fresh instance and data root)
and prints wall time and peak memory (max RSS of that process).

    .venv/bin/python bench/bench_pipeline.py                 # 2-minute 1080p clip
    .venv/bin/python bench/bench_pipeline.py --minutes 5 --full --full-minutes 24
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import imageio_ffmpeg  # noqa: E402

from anime_assets.stages import clean_frames as cf  # noqa: E402
from anime_assets.stages import frame_index as fi  # noqa: E402
from anime_assets.stages import shot_boundaries as sb  # noqa: E402
from anime_assets.storage.media import MediaStore  # noqa: E402
from anime_assets.vision import decode  # noqa: E402
from anime_assets.vision.frames import DrawingTracker  # noqa: E402
from anime_assets.vision.shots import transition_frames  # noqa: E402
from anime_assets_tests.fixtures import clips  # noqa: E402


def episode_clip(minutes: float, size=(1920, 1080)) -> tuple[Path, object]:
    out = clips.cache_dir() / "bench" / f"episode_{minutes:g}min_{size[1]}p.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)
    truth_path = out.with_suffix(".truth.json")
    if out.exists() and truth_path.exists():
        return out, clips.GroundTruth.load(truth_path)
    t0 = time.perf_counter()
    truth = clips.long_episode(out, minutes=minutes, size=size)
    print(f"generated {out.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out, truth


def ffmpeg_decode_seconds(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-threads", "0",
                    "-i", str(path), "-f", "null", "-"], check=True)
    return time.perf_counter() - t0


def decode_only_seconds(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(1 for _ in decode.iter_frames(path))
    return time.perf_counter() - t0, n


def selection_pass_seconds(path: Path) -> float:
    info = decode.probe(path)
    views = decode.FrameViews(info.width, info.height)
    tracker = DrawingTracker()
    t0 = time.perf_counter()
    for df in decode.iter_frames(path):
        gray, _ = views.views(df.frame)
        tracker.push(df.index, gray)
    return time.perf_counter() - t0


def clean_frames_end_to_end(path: Path, store: MediaStore, scorer) -> dict:
    t0 = time.perf_counter()
    index = fi.build_frame_index(path, store, "bench")
    t1 = time.perf_counter()
    det, _ = sb.detect_episode_shots(index, scorer)
    doc = sb.shots_document("bench", index, det, "bench")
    t2 = time.perf_counter()
    trans = transition_frames(doc["boundaries"])
    kept = []
    for i in range(len(doc["shots"])):
        res = cf.select_clean_frames(store, index, doc, trans, "bench", f"s{i:04d}")
        kept += [k.frame_index for k in res.kept]
    t3 = time.perf_counter()
    return {"index_s": t1 - t0, "shots_s": t2 - t1, "select_s": t3 - t2, "kept": sorted(kept),
            "candidates": len(index.cand_idx), "n_shots": len(doc["shots"]), "frames": index.n_frames}


def drawing_metrics(kept: list[int], truth) -> tuple[int, int, float]:
    """(distinct drawings in truth, drawings lost, fraction of kept frames repeating a kept drawing)."""
    drawings = {f["drawing"] for f in truth.frames if f["drawing"] is not None}
    seen, repeats = set(), 0
    for k in kept:
        d = truth.frames[k]["drawing"]
        if d is not None and d in seen:
            repeats += 1
        seen.add(d)
    return len(drawings), len(drawings - seen), repeats / max(len(kept), 1)


def full_graph(minutes: float) -> dict:
    path, truth = episode_clip(minutes)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DAGSTER_HOME=tmp, ANIME_ASSETS_DATA=str(Path(tmp) / "data"))
        Path(tmp, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        t0 = time.perf_counter()
        proc = subprocess.run([str(ROOT / ".venv/bin/anime-assets"), "ingest", str(path), "--episode", "bench",
                               "--quiet"], env=env, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
        return {"minutes": minutes, "frames": truth.n_frames, "wall_s": wall, "peak_gb": peak_kb / 1024 ** 2,
                "ok": proc.returncode == 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=2.0, help="length of the 1080p clip for the ratio table")
    ap.add_argument("--full", action="store_true", help="also run a whole episode through the Dagster graph")
    ap.add_argument("--full-minutes", type=float, default=24.0)
    ap.add_argument("--repeat", type=int, default=3, help="time each step this many times, keep the best")
    args = ap.parse_args()

    from anime_assets.models.transnet import get_transnet

    path, truth = episode_clip(args.minutes)
    info = decode.probe(path)
    scorer = get_transnet()
    # Best of N: the machine is shared, and the minimum is the least disturbed measurement.
    ff = min(ffmpeg_decode_seconds(path) for _ in range(args.repeat))
    dec, n = min(decode_only_seconds(path) for _ in range(args.repeat))
    sel = min(selection_pass_seconds(path) for _ in range(args.repeat))
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(clean_frames_end_to_end(path, MediaStore(tmp), scorer))
    e2e = min(runs, key=lambda r: r["index_s"] + r["select_s"])
    e2e["shots_s"] = min(r["shots_s"] for r in runs)
    clean_s = e2e["index_s"] + e2e["select_s"]
    n_draw, lost, rep = drawing_metrics(e2e["kept"], truth)

    print(f"\n## Decode + clean frames ({info.width}x{info.height}, {n} frames, {args.minutes:g} min; best of {args.repeat})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| step | seconds | frames/s | vs ffmpeg decode |")
    print("|---|---:|---:|---:|")
    for name, s in [("ffmpeg -f null decode (baseline)", ff), ("our decode loop only", dec),
                    ("selection pass: decode + views + drawing tracker", sel),
                    ("frame_index stage: + candidate JPEG writes", e2e["index_s"]),
                    ("decode + clean frames (frame_index + per-shot selection)", clean_s)]:
        print(f"| {name} | {s:.1f} | {n / s:.0f} | {ff / s:.2f}x |")
    print(f"| shot detection (TransNetV2 + classical, on stored 48x27 views) | {e2e['shots_s']:.1f} | "
          f"{n / e2e['shots_s']:.0f} | - |")
    print(f"\ncandidates written: {e2e['candidates']} ({e2e['candidates'] / n:.1%} of frames); kept: {len(e2e['kept'])}; "
          f"shots found: {e2e['n_shots']} (truth {len(truth.shots)})")
    print(f"drawings: {n_draw} distinct in truth, {lost} lost, {rep:.1%} of kept frames repeat a kept drawing")

    if args.full:
        r = full_graph(args.full_minutes)
        print("\n## Whole episode through the Dagster graph (`anime-assets ingest`)\n")
        print("| episode | frames | wall | peak memory | result |")
        print("|---|---:|---:|---:|---|")
        print(f"| {r['minutes']:g} min 1080p | {r['frames']} | {r['wall_s'] / 60:.1f} min | {r['peak_gb']:.2f} GB | "
              f"{'ok' if r['ok'] else 'FAILED'} |")


if __name__ == "__main__":
    main()
