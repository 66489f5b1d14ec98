"""Per-stage cost of the whole pipeline: each asset step's time per kept frame and its share.

Ingests a clip through the real Dagster graph (`anime-assets ingest`, in-process, fresh instance
and data root), then reads every step's start and end from the run logs. Prints, per stage:
seconds, milliseconds per kept frame (and per decoded frame for the episode-level stages), the
share of the whole pipeline, and the ratio to ffmpeg's own decode of the same file measured in
this run (the baseline). CPU time of the process is printed too: with 2 cores, CPU / wall shows
how much of the time both cores work.

    .venv/bin/python bench/bench_stages.py                       # the bundled sample episode
    .venv/bin/python bench/bench_stages.py --clip path/to/episode.mp4
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import ffmpeg_decode_seconds  # noqa: E402

# Step (op) name -> the stage it is, in pipeline order.
STAGES = {
    "source_video": "source video (probe)", "frame_index": "decode + frame index",
    "shot_boundaries": "shot boundaries", "clean_frames": "clean frames", "frame_embeddings": "embeddings",
    "frame_faces": "faces + expression", "episode_clusters": "episode clusters", "season_clusters": "season clusters",
    "shot_layers": "layers (character, effect, background)", "frame_pose": "pose", "frame_captions": "captions",
}
PER_DECODED = {"source_video", "frame_index", "shot_boundaries"}


def step_seconds(instance) -> dict[str, float]:
    import dagster as dg

    totals: dict[str, float] = defaultdict(float)
    for run in instance.get_runs():
        starts = {}
        for rec in instance.get_records_for_run(run.run_id, of_type={dg.DagsterEventType.STEP_START,
                                                                     dg.DagsterEventType.STEP_SUCCESS}).records:
            ev = rec.event_log_entry
            key = ev.step_key
            if ev.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                starts[key] = ev.timestamp
            elif key in starts:
                totals[key] += ev.timestamp - starts.pop(key)
    return dict(totals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, default=ROOT / "samples" / "sample_episode.mp4")
    args = ap.parse_args()
    clip = args.clip.resolve()

    baseline = min(ffmpeg_decode_seconds(clip) for _ in range(3))
    with tempfile.TemporaryDirectory(prefix="bench_stages_") as tmp:
        (Path(tmp) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = tmp
        os.environ["ANIME_ASSETS_DATA"] = str(Path(tmp) / "data")
        import dagster as dg

        from anime_assets import cli
        from anime_assets.defs.resources import StorageResource
        from anime_assets.definitions import MODELS
        from anime_assets.stages.frame_index import load_frame_index

        cpu0, t0 = time.process_time(), time.perf_counter()
        if cli.main(["ingest", str(clip), "--episode", "bench", "--quiet"]) != 0:
            sys.exit("ingest failed")
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        steps = step_seconds(dg.DagsterInstance.get())
        storage = StorageResource()
        kept = storage.frames_for_reading().count("bench")
        decoded = load_frame_index(storage.media(), "bench").n_frames

    total = sum(steps.values())
    print(f"# Per-stage cost: {clip.name} ({decoded} decoded frames, {kept} kept), "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print("models: " + ", ".join(f"{s}={r.model_id}" for s, r in MODELS.items()))
    print(f"baseline: ffmpeg decode of the file {baseline:.2f} s (best of 3)\n")
    print("| stage | seconds | ms / kept frame | ms / decoded frame | share | x ffmpeg decode |")
    print("|---|---|---|---|---|---|")
    for step, name in STAGES.items():
        if step not in steps:
            continue
        s = steps[step]
        per_decoded = f"{1000 * s / decoded:.1f}" if step in PER_DECODED else ""
        print(f"| {name} | {s:.1f} | {1000 * s / kept:.0f} | {per_decoded} | {100 * s / total:.1f}% | "
              f"{s / baseline:.1f} |")
    other = wall - total
    print(f"| **all steps** | {total:.1f} | {1000 * total / kept:.0f} |  | 100% | {total / baseline:.1f} |")
    print(f"\nwall {wall:.1f} s for the ingest ({other:.1f} s outside steps: run set-up, model and UMAP "
          f"compilation, LanceDB); process CPU {cpu:.1f} s = {cpu / wall:.2f} cores busy on average; "
          f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
