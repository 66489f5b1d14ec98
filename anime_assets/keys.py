"""Partition keys: the only strings that become folder names, table filters and Dagster keys.

Every key is `[a-z0-9_-]`, starts with a letter or digit and is at most 64 characters,
so a key can never climb out of a folder (`..`, `/`), quote its way out of a LanceDB
filter (`'`) or be read by a shell. Episode keys are derived from file names; shot keys
are the shot's position in its episode.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import PurePath

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SHOT_KEY_RE = re.compile(r"^s(\d{4})$")


class KeyError_(ValueError):
    """A key that is not safe to use as a partition, folder or filter value."""


def validate_key(key: str, what: str = "key") -> str:
    """Return `key` unchanged if it is safe, else raise with a one-line reason."""
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise KeyError_(
            f"invalid {what} {key!r}: use 1-64 characters of [a-z0-9_-], starting with a letter or digit"
        )
    return key


def episode_key_from_filename(name: str) -> str:
    """Derive an episode key from a file name: `My Show - 01 [1080p].mkv` -> `my_show_-_01_1080p`.

    Only the last path component's stem is used, so `../../etc/passwd` becomes `passwd`.
    Two names must not share a key by accident, so where sanitising loses information that
    tells names apart - letters with no ASCII form (`第一話.mp4`) or a stem cut at 64 characters -
    the key ends in a short digest of the whole stem (`x-3f9c0a1e`, `long_name_..._-5b2d7e10`).
    """
    stem = PurePath(str(name).replace("\\", "/")).name
    if "." in stem:
        stem = stem.rsplit(".", 1)[0]
    folded = unicodedata.normalize("NFKD", stem)
    ascii_stem = folded.encode("ascii", "ignore").decode("ascii").lower()
    key = re.sub(r"[^a-z0-9_-]+", "_", ascii_stem)
    key = re.sub(r"_+", "_", key).strip("_-")
    lost_letters = any(unicodedata.category(c)[0] in "LN" and not c.isascii() and not unicodedata.combining(c)
                       for c in folded)
    if lost_letters or len(key) > 64:
        digest = hashlib.sha256(unicodedata.normalize("NFC", stem).encode()).hexdigest()[:8]
        key = f"{key[:55].strip('_-') or 'x'}-{digest}"
    if not key:
        raise KeyError_(f"{name}: cannot derive an episode key from this file name; pass --episode")
    return validate_key(key, "episode key")


def shot_key(index: int) -> str:
    """Shot keys are zero-padded positions, so they sort in time order: 0 -> `s0000`."""
    if not 0 <= index <= 9999:
        raise KeyError_(f"shot index {index} out of range 0-9999")
    return f"s{index:04d}"


def shot_index(key: str) -> int:
    m = SHOT_KEY_RE.match(key)
    if not m:
        raise KeyError_(f"invalid shot key {key!r}: expected s0000-s9999")
    return int(m.group(1))
