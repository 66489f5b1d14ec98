"""The episodes inbox: which video file holds which episode key.

A key names exactly one file. A show's seasons on disk share file names (`season1/01.mkv`,
`season2/01.mkv`), and `EP01.mp4` and `ep01.mkv` sanitise to the same key, so the inbox
remembers which file was registered under each key (`.episodes.json`, written under a file
lock by whoever registers: the CLI or the inbox sensor):

* the same file again (same inode, or same bytes) is the same episode: nothing changes;
* a different file under a taken key is refused with a line that says which `--episode` to use;
* files whose keys collide and none of which is registered are all skipped, with the reason,
  rather than one of them winning by the order of a directory listing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from anime_assets import settings
from anime_assets.keys import episode_key_from_filename, validate_key

RECORD = ".episodes.json"
LOCK = ".episodes.lock"
BUSY = ".busy"  # one lock file per episode being processed


class InboxError(ValueError):
    """A file that cannot go into the inbox; str() is one line naming the file and the reason."""


@dataclass
class InboxScan:
    files: dict[str, str] = field(default_factory=dict)  # episode key -> file name
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why it is not an episode
    contested: dict[str, str] = field(default_factory=dict)  # skipped file name -> the key it would have had


def same_content(a: Path, b: Path) -> bool:
    """Same file: one inode, or the same size and sha256 (hashed only when the sizes agree)."""
    if os.path.samefile(a, b):
        return True
    return a.stat().st_size == b.stat().st_size and _sha256(a) == _sha256(b)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _one_line(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "disk full (no space left on device)"
    return e.strerror or str(e)


class Inbox:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    # ---- the record of registered files -----------------------------------------
    @contextmanager
    def locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def working_on(self, key: str):
        """Held while one command processes episode `key`; a second one is refused, not interleaved
        (two writers of one partition would remove each other's staging folders)."""
        locks = self.folder / BUSY
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / validate_key(key, "episode"), "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InboxError(f"episode {key} is being processed by another command; "
                                 "wait for it to finish (or stop it) and try again") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def owners(self) -> dict[str, str]:
        """episode key -> registered file name."""
        try:
            data = json.loads((self.folder / RECORD).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def _write_owners(self, owners: dict[str, str]) -> None:
        tmp = self.folder / f"{RECORD}.tmp-{os.getpid()}"
        try:
            tmp.write_text(json.dumps(owners, indent=1, sort_keys=True))
            os.replace(tmp, self.folder / RECORD)
        except OSError as e:
            raise InboxError(f"{self.folder / RECORD}: cannot record the inbox's episodes: {_one_line(e)}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def claim(self, key: str, name: str) -> None:
        """Record `name` as the file of episode `key` (call under `locked`)."""
        owners = self.owners()
        if owners.get(key) != name:
            owners[validate_key(key, "episode")] = name
            self._write_owners(owners)

    def forget(self, key: str, remove_file: bool) -> None:
        """Unregister `key`; with remove_file, delete its inbox file too (a link or copy this product made)."""
        with self.locked():
            owners = self.owners()
            name = owners.pop(key, None) or self.scan().files.get(key)
            self._write_owners(owners)
            if remove_file and name:
                (self.folder / name).unlink(missing_ok=True)

    # ---- what is in the folder ---------------------------------------------------
    def scan(self) -> InboxScan:
        """Every video file in the inbox: usable ones by key, the others with the reason."""
        out = InboxScan()
        if not self.folder.is_dir():
            return out
        by_key: dict[str, list[str]] = {}
        for p in sorted(self.folder.iterdir()):
            if not p.is_file() or not p.name.lower().endswith(settings.VIDEO_EXTENSIONS):
                continue
            if p.name.startswith("."):  # `.mp4`, macOS `._ep01.mp4` resource forks: never episodes
                out.skipped[p.name] = f"{p.name}: hidden file (its name starts with '.'); rename it to ingest it"
                continue
            try:
                by_key.setdefault(episode_key_from_filename(p.name), []).append(p.name)
            except ValueError as e:
                out.skipped[p.name] = str(e)
        owners = self.owners()
        for key, names in by_key.items():
            owner = owners.get(key)
            if owner in names:
                out.files[key] = owner
                for other in names:
                    if other != owner:
                        out.skipped[other] = f"{other}: episode key {key} belongs to {owner}; rename this file"
                        out.contested[other] = key
            elif len(names) == 1:
                out.files[key] = names[0]
            else:
                for name in names:
                    out.skipped[name] = (f"{name}: {', '.join(names)} all map to episode key {key}; "
                                         "rename all but one")
                    out.contested[name] = key
        return out

    def video(self, key: str) -> Path:
        """The file of episode `key`; one-line errors for a missing or ambiguous one."""
        validate_key(key, "episode")
        scan = self.scan()
        if key in scan.files:
            return self.folder / scan.files[key]
        reasons = [scan.skipped[name] for name, k in scan.contested.items() if k == key]
        if reasons:
            raise ValueError(f"episode {key}: {reasons[0]}")
        raise FileNotFoundError(f"episode {key}: no video file for it in {self.folder}")

    # ---- putting a file in -------------------------------------------------------
    def place(self, src: Path, key: str) -> tuple[Path, bool]:
        """Link (or copy) `src` into the inbox as episode `key`; idempotent for the same file.
        Returns (the inbox file, whether this call put it there)."""
        validate_key(key, "episode")
        with self.locked():
            held = self.scan().files.get(key)
            if held is not None:
                return self._same_or_refuse(src, key, self.folder / held), False
            suffix = src.suffix.lower() if src.suffix.lower() in settings.VIDEO_EXTENSIONS else ".mp4"
            dst = self.folder / f"{key}{suffix}"
            self._link_or_copy(src, dst)
            self.claim(key, dst.name)
            return dst, True

    def _same_or_refuse(self, src: Path, key: str, held: Path) -> Path:
        if same_content(src, held):
            self.claim(key, held.name)
            return held
        suggestion = suggest_key(src)
        raise InboxError(f"{src}: episode {key} already holds a different file ({held.name}); "
                         f"ingest this one under its own key, e.g. --episode {suggestion}")

    def _link_or_copy(self, src: Path, dst: Path) -> None:
        # A hidden temp name: the sensor and every listing skip it while it is incomplete.
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        for leftover in self.folder.glob(f".{dst.name}.tmp-*"):  # of a killed copy (we hold the lock)
            leftover.unlink(missing_ok=True)
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        except OSError as e:
            raise InboxError(f"{src}: cannot put it into the inbox {self.folder}: {_one_line(e)}") from None
        finally:
            tmp.unlink(missing_ok=True)


def suggest_key(src: Path) -> str:
    """A key that tells this file from its namesakes: its folder's name before its own (`season2-01`)."""
    parent = Path(os.path.abspath(src)).parent.name
    try:
        return episode_key_from_filename(f"{parent}-{src.name}" if parent else src.name)
    except ValueError:
        return "KEY"
