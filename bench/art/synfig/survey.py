"""List the examples of Debian's synfig-examples: canvas, length, animation, top layer tree.

    python bench/art/synfig/survey.py [--out bench/out/synfig] [--depth 1] [NAME ...]

Downloads the package into OUT/package like render.py (apt-get download), renders nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402
import sif  # noqa: E402


def describe(path: Path, depth: int) -> str:
    root = sif.load(path).getroot()
    h = sif.canvas_header(root)
    n_anim = sif.count_animated(root)
    secs = h["end"] - h["begin"]
    lines = [f"== {path.stem}: {h['width']}x{h['height']} @ {h['fps']:g} fps, "
             f"{'still' if secs <= 0 else f'{secs:g} s'}, {n_anim} animated parameters/converters, "
             f"{sum(1 for _ in root.iter('layer'))} layers"]
    for li in sif.layers(root, max_depth=depth):
        if li.depth > depth:
            continue
        blend = sif.BLEND.get(li.blend, li.blend) if isinstance(li.blend, int) else li.blend
        extra = f" [{li.n_inside} inside]" if li.n_inside else ""
        ref = f" pastes {li.canvas_ref}" if li.canvas_ref else ""
        lines.append(f"{'  ' * (li.depth + 1)}{li.path:>6} {li.type:<16} {li.desc!r:<34} "
                     f"{'' if li.active else 'OFF '}amount={li.amount} blend={blend}{extra}{ref}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(render.DEFAULT_OUT))
    ap.add_argument("--depth", type=int, default=0, help="how deep to list group contents")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args(argv)
    pkg = render.fetch_package(Path(args.out) / "package")
    print(f"{render.PACKAGE} {pkg['version']} sha256 {pkg['sha256']} licence {pkg['license']}")
    files = sorted(pkg["examples_dir"].glob("*.sif"))
    for f in files:
        if args.names and f.stem not in args.names:
            continue
        print(describe(f, args.depth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
