"""Media files (frames, thumbnails, plots) addressed by asset / episode / shot / name.

Layout: `<root>/<asset>/<episode>/<shot>/<name>`, or `<root>/<asset>/<episode>/<name>` for
episode-level assets (shot=None). Every write is atomic so a reader (another Dagster step,
the UI, a training job) never sees a half-written file or a half-filled partition folder:

* single files: written to a temp file in the same folder, then `os.replace`d;
* whole partitions: built in a sibling staging folder, then swapped in with renames.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from anime_assets.keys import validate_key

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# Temp/staging/retired names start with "." so listings and globs (`*.jpg`) skip them,
# and share a prefix so a later attempt can find and remove leftovers of a crashed one.
TMP_PREFIX = ".tmp-"
STAGING_SUFFIX = ".staging-"
RETIRED_SUFFIX = ".retired-"


class MediaNameError(ValueError):
    """A file or asset name that could escape its folder or is not portable."""


def validate_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", "..") or ".." in name:
        raise MediaNameError(f"invalid {what} {name!r}: use 1-128 characters of [A-Za-z0-9._-], no '..'")
    if name.startswith("."):
        # Leading dots are reserved for our temp/staging folders.
        raise MediaNameError(f"invalid {what} {name!r}: must not start with '.'")
    return name


class MediaStore:
    """Files under `root`, addressed by (asset, episode, shot, name); all writes atomic."""

    def __init__(self, root: Path | str, retired_grace_s: float = 0.0):
        """`retired_grace_s`: how long a replaced partition folder is kept (hidden, renamed away)
        before deletion. 0 deletes it right after the swap; a reader that opened the old folder
        just before the swap then sees its files vanish. A grace of a few seconds lets such
        readers finish; the leftovers are purged by later commits / `clean_stale`."""
        self.root = Path(root).resolve()
        self.retired_grace_s = float(retired_grace_s)

    # ---- paths -------------------------------------------------------------------
    def partition_dir(self, asset: str, episode: str, shot: str | None = None) -> Path:
        parts = [validate_name(asset, "asset"), validate_key(episode, "episode")]
        if shot is not None:
            parts.append(validate_key(shot, "shot"))
        return self.root.joinpath(*parts)

    def path(self, asset: str, episode: str, shot: str | None, name: str) -> Path:
        return self.partition_dir(asset, episode, shot) / validate_name(name)

    @staticmethod
    def uri(path: Path | str) -> str:
        return Path(path).resolve().as_uri()

    @staticmethod
    def path_from_uri(uri: str) -> Path:
        """Inverse of `uri` for file:// URIs (readers get image_uri from the table)."""
        from urllib.parse import unquote, urlparse

        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ValueError(f"not a file:// URI: {uri!r}")
        return Path(unquote(parsed.path))

    # ---- single files ------------------------------------------------------------
    def write_bytes(self, asset: str, episode: str, shot: str | None, name: str, data: bytes) -> Path:
        target = self.path(asset, episode, shot, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, data)
        return target

    def write_image(
        self,
        asset: str,
        episode: str,
        shot: str | None,
        name: str,
        bgr: np.ndarray,
        fmt: str = "jpg",
        quality: int = 95,
    ) -> Path:
        return self.write_bytes(asset, episode, shot, name, encode_image(bgr, fmt, quality))

    def read_bytes(self, asset: str, episode: str, shot: str | None, name: str) -> bytes:
        return self.path(asset, episode, shot, name).read_bytes()

    def list_names(self, asset: str, episode: str, shot: str | None = None) -> list[str]:
        folder = self.partition_dir(asset, episode, shot)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    # ---- whole partitions --------------------------------------------------------
    def staging_dir(self, asset: str, episode: str, shot: str | None = None) -> Path:
        """A fresh, empty sibling folder to build a partition in; pass it to `commit_dir`.

        Leftover staging/retired folders of an earlier failed attempt are removed first.
        """
        final = self.partition_dir(asset, episode, shot)
        final.parent.mkdir(parents=True, exist_ok=True)
        self.clean_stale(asset, episode, shot)
        staging = final.parent / f".{final.name}{STAGING_SUFFIX}{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        return staging

    def commit_dir(self, staging: Path, asset: str, episode: str, shot: str | None = None) -> Path:
        """Swap `staging` in as the partition folder, replacing whatever was there.

        On Linux the swap is one `renameat2(RENAME_EXCHANGE)`: a reader sees the old complete
        folder or the new complete folder, never a half or a missing one. Elsewhere (or on a
        filesystem without it) it falls back to two renames (old -> retired, staging -> final),
        where the folder is absent for an instant between them. The old folder is removed after.
        """
        final = self.partition_dir(asset, episode, shot)
        staging = Path(staging)
        if staging.parent.resolve() != final.parent or not staging.name.startswith(f".{final.name}{STAGING_SUFFIX}"):
            raise ValueError(f"{staging} is not a staging folder of {final}")
        retired = final.parent / f".{final.name}{RETIRED_SUFFIX}{uuid.uuid4().hex[:12]}"
        if final.exists():
            if _rename_exchange(staging, final):
                os.replace(staging, retired)  # staging now holds the old content
            else:
                os.replace(final, retired)
                os.replace(staging, final)
        else:
            os.replace(staging, final)
        _fsync_dir(final.parent)
        self._retire(retired)
        return final

    def remove_partition(self, asset: str, episode: str, shot: str | None = None) -> bool:
        """Remove a partition folder (renamed away first, so it disappears in one step)."""
        final = self.partition_dir(asset, episode, shot)
        if not final.exists():
            return False
        retired = final.parent / f".{final.name}{RETIRED_SUFFIX}{uuid.uuid4().hex[:12]}"
        os.replace(final, retired)
        self._retire(retired)
        return True

    def _retire(self, retired: Path) -> None:
        if not retired.exists():
            return
        if self.retired_grace_s <= 0:
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.utime(retired)  # the grace period counts from now, not from the folder's last write

    def clean_stale(self, asset: str, episode: str, shot: str | None = None) -> int:
        """Remove staging/retired folders and temp files left by a crashed earlier attempt.

        Safe while no other writer works on the same partition (Dagster runs one step per
        partition at a time); returns how many entries were removed.
        """
        final = self.partition_dir(asset, episode, shot)
        removed = 0
        if final.parent.is_dir():
            for leftover in final.parent.glob(f".{final.name}{STAGING_SUFFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
                removed += 1
            cutoff = time.time() - self.retired_grace_s
            for leftover in final.parent.glob(f".{final.name}{RETIRED_SUFFIX}*"):
                try:
                    expired = leftover.stat().st_mtime <= cutoff
                except FileNotFoundError:
                    continue
                if expired:
                    shutil.rmtree(leftover, ignore_errors=True)
                    removed += 1
        if final.is_dir():
            for leftover in final.glob(TMP_PREFIX + "*"):
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed


def encode_image(bgr: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """Encode a BGR (or grey) uint8 image with OpenCV; raises on failure instead of writing junk."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("jpg", "jpeg", "png", "webp"):
        raise ValueError(f"unsupported image format {fmt!r}")
    if not isinstance(bgr, np.ndarray) or bgr.dtype != np.uint8 or bgr.ndim not in (2, 3):
        raise ValueError("expected a uint8 HxW or HxWxC array")
    params: list[int] = []
    if fmt in ("jpg", "jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, buf = cv2.imencode("." + fmt, np.ascontiguousarray(bgr), params)
    if not ok:
        raise ValueError(f"cv2.imencode failed for format {fmt!r}")
    return buf.tobytes()


def _atomic_write(target: Path, data: bytes) -> None:
    # Temp file in the same folder: os.replace is only atomic within one filesystem.
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # filesystem or kernel without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
