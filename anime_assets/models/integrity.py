"""Model files themselves: their sha256 (kept per file version), the lock file of digests that
`models pull` recorded, and cheap checks that a file is a model at all.

Nothing here knows the registry: `registry` decides which digest a file must have; this module
only says what a file's digest is, what was recorded for it, and whether it parses.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import struct
from functools import lru_cache
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _version_key(path: Path) -> tuple[str, int, int, int, int]:
    real = Path(path).resolve()
    st = real.stat()
    return str(real), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


DIGEST_CACHE_ENV = "ANIME_ASSETS_DIGEST_CACHE"
_DIGEST_CACHE_MIN_BYTES = 16 << 20  # smaller files hash faster than the cache file is read


def digest_cache_path() -> Path:
    """Where digests of large model files are kept between processes, by file version."""
    if os.environ.get(DIGEST_CACHE_ENV):
        return Path(os.environ[DIGEST_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "anime_assets" / "sha256-by-file-version.json"


@lru_cache(maxsize=64)
def _sha256_of_version(path: str, size: int, mtime_ns: int, ctime_ns: int, ino: int) -> str:
    if size < _DIGEST_CACHE_MIN_BYTES:
        return sha256_file(Path(path))
    # Every run worker loads the definitions, which check the selected models: without this, each
    # process would hash ~1.5 GB of weights. A file whose size, times or inode changed is hashed again
    # (ctime changes on any write or metadata change), as git's index trusts an unchanged stat.
    version = [size, mtime_ns, ctime_ns, ino]
    cache_file = digest_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(path) if isinstance(cache, dict) else None
    if isinstance(entry, dict) and entry.get("version") == version and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(Path(path))
    cache = cache if isinstance(cache, dict) else {}
    cache[path] = {"version": version, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)  # a concurrent writer may drop an entry: it is only a cache
    except OSError:
        pass
    return digest


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per file version (path, size, times, inode): once per process,
    and for large weights once across processes (see digest_cache_path)."""
    return _sha256_of_version(*_version_key(path))


# ---------------------------------------------------------------- the lock file
LOCK_ENV = "ANIME_ASSETS_MODELS_LOCK"
LOCK_NAME = "models.lock.json"
_LOCK_ABOUT = ("sha256 of hub model files as `anime-assets models pull` downloaded them (trust on first pull), "
               "by repo, commit and file. Digests registered in anime_assets/models/registry.py take "
               "precedence. Keep this file (commit it to share it); delete an entry to trust a new download.")


def lock_path() -> Path:
    """$ANIME_ASSETS_MODELS_LOCK, else models.lock.json in the project root (a source checkout: the
    folder with pyproject.toml above the package), else in the data root (ANIME_ASSETS_DATA)."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV]).expanduser()
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        return root / LOCK_NAME
    from anime_assets.settings import data_root

    return data_root() / LOCK_NAME


def recorded_sha256(repo_id: str, commit: str, name: str) -> tuple[str | None, str | None]:
    """(the sha256 a pull recorded for the file, why the lock file could not be read or None)."""
    hub, problem = _read_lock(lock_path())
    entry = hub.get(repo_id, {}).get(commit, {}).get(name) if commit else None
    return (entry if isinstance(entry, str) else None), problem


def _read_lock(path: Path) -> tuple[dict, str | None]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"the lock file {path} cannot be read ({exc})"
    return _read_lock_version(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@lru_cache(maxsize=8)
def _read_lock_version(path: str, size: int, mtime_ns: int, ino: int) -> tuple[dict, str | None]:
    try:
        return _parse_lock(Path(path).read_text(encoding="utf-8")), None
    except (OSError, ValueError) as exc:
        return {}, f"the lock file {path} cannot be read ({exc})"


def _parse_lock(text: str) -> dict:
    if not text.strip():
        return {}
    data = json.loads(text)
    hub = data.get("hub", {}) if isinstance(data, dict) else None
    if not isinstance(hub, dict):
        raise ValueError("not a models lock file (no 'hub' object)")
    return hub


def update_lock(change):
    """Apply `change(hub)` to the lock file's hub digests and write it back atomically, serialised
    between processes (flock on the file; the rename makes a waiting process re-open the new one).
    Returns what `change` returned. An unreadable lock file is an error, never overwritten."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                continue  # replaced while we waited: take the lock on the new file
            with open(fd, encoding="utf-8", closefd=False) as f:
                hub = _parse_lock(f.read())
            result = change(hub)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"about": _LOCK_ABOUT, "version": 1, "hub": hub}, indent=2, sort_keys=True) + "\n",
                           encoding="utf-8")
            os.replace(tmp, path)
            return result
        finally:
            os.close(fd)


# ---------------------------------------------------------------- cheap format checks
def format_problem(path: Path) -> str | None:
    """Why `path` cannot be a model file of its kind (None: it may be). Reads a few bytes only:
    ONNX: the top-level protobuf fields must chain to the end of the file and include the graph;
    safetensors: the header must parse and account for the file's size; anything: not empty."""
    return _format_problem_of_version(*_version_key(path), Path(path).name.lower())


@lru_cache(maxsize=64)
def _format_problem_of_version(real: str, size: int, mtime_ns: int, ctime_ns: int, ino: int, name: str) -> str | None:
    if size == 0:
        return "an empty file"
    try:
        if name.endswith(".onnx"):
            return _onnx_problem(Path(real), size)
        if name.endswith(".safetensors"):
            return _safetensors_problem(Path(real), size)
    except OSError as exc:
        return f"unreadable ({exc})"
    return None


def _read_varint(f) -> int | None:
    value = shift = 0
    for _ in range(10):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
    return None


def _onnx_problem(path: Path, size: int) -> str | None:
    fields = set()
    with open(path, "rb") as f:
        pos = 0
        for _ in range(100_000):
            if pos >= size:
                break
            tag = _read_varint(f)
            field_number, wire = (tag >> 3, tag & 7) if tag is not None else (0, -1)
            if field_number == 0 or wire not in (0, 1, 2, 5):
                return f"{size} bytes, not an ONNX model (no protobuf field at byte {pos})"
            if wire == 0:
                if _read_varint(f) is None:
                    return f"{size} bytes, a truncated ONNX file"
                pos = f.tell()
            else:
                length = {1: 8, 5: 4}.get(wire)
                if length is None:
                    length = _read_varint(f)
                    if length is None:
                        return f"{size} bytes, a truncated ONNX file"
                pos = f.tell() + length
                if pos > size:
                    return f"{size} bytes, a truncated ONNX file (a field runs {pos - size} bytes past the end)"
                f.seek(pos)
            fields.add(field_number)
    if 7 not in fields:
        return f"{size} bytes, not an ONNX model (it has no graph)"
    return None


def _safetensors_problem(path: Path, size: int) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or 8 + n > size or n > 100 << 20:
            return f"{size} bytes, not a safetensors file (bad header length)"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{size} bytes, not a safetensors file (unreadable header)"
    if 8 + n + end != size:
        return f"{size} bytes, a safetensors file of the wrong size (its header says {8 + n + end}: truncated?)"
    return None
