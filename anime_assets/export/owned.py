"""An export folder shared with the user: which files an earlier export wrote, and replacing them.

A trainer export (the kohya-ss folder; next, video clips and ControlNet pairs) is a folder the
user then works in: trained LoRAs, notes, extra images and trainer caches end up beside the
export and inside its folders.  This module writes such a folder and overwrites it later without
touching any of that.  An exporter describes its folder with a `Format` (the name and version in
export.json, and its entry files), then::

    prev = check_target(out_dir, fmt, overwrite, digests=False)   # refuse early, before any work
    if prev is not None:
        check_plan(out_dir, prev, files_it_will_write, dirs_it_will_make)
    with staging(out_dir) as tmp:
        ...                                                        # write the whole export in tmp
    put_in_place(tmp, out_dir, fmt, manifest, overwrite)

export.json (`MANIFEST`) holds the exporter's `manifest` between `format` / `format_version`
(first) and what this module adds (last): `state`, "complete", or "incomplete" while an
overwrite is being put in place; `files`, every file the export wrote,
`[{"path": "img/1_x/a.png", "size": bytes, "sha256": hex}, ...]` (paths relative to `out_dir`,
"/"-separated; export.json itself is not in the list); and `dirs`, every folder it made.

Writing and overwriting (an export never deletes a file or folder it did not write):

* A new export (no `out_dir`, or an empty one) is written into a hidden temporary folder beside
  `out_dir` and renamed into place at the end: atomic, never half there.
* `out_dir` not empty: refused without `overwrite`, and refused with it unless its export.json is
  one of ours (the format, a version that lists its files, a well-formed list, every path
  relative, inside `out_dir`, no "..", no symbolic link on the way).  Then only the listed files
  are replaced or removed; every other file and folder stays as it was, beside the export or
  inside its folders.  Listed folders the new export does not use are removed when that leaves
  them empty.  An export.json of a version without a file list (kohya's format_version 1) is
  refused too: its files cannot be told from the user's.
* A listed file the user changed since (other size or sha256, or no longer a plain file) refuses
  the overwrite with one line naming it, before anything is touched: it is the user's work now
  (a hand-fixed caption, a tuned config), and neither silently destroying it nor keeping it inside
  a new export it no longer matches is right.  Move it out (or delete it) and export again.  A user
  file where the new export writes one of its files or folders is refused the same way.
* The replacement cannot be one folder rename any more (the user's files stay where they are), so
  it is journaled: the new export is staged in full beside `out_dir` first; then export.json is
  replaced by a journal (`state = "incomplete"`, the new list and the old one), the old files are
  moved aside into the staging folder (the format's entry files, kohya's dataset_config.toml and
  README.txt, first), the new files are moved in (the entry files last) and the complete
  export.json is written last.  An error on the way moves everything back (the old export returns
  byte for byte); after a crash `out_dir` has none of the entry files (no trainer starts on a mix
  of old and new), its export.json says "incomplete" and the same export with overwrite finishes
  the job (a file may then match either list).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

MANIFEST = "export.json"
# this module's own names in the staging folder: hidden, so that they cannot clash with an
# export's (an exporter writes no top-level name starting with "."; kohya's safe_name never does)
_JOURNAL = ".journal.json"
_RESTORE = ".restore.json"
_ASIDE = ".replaced"
_SHA = re.compile(r"[0-9a-f]{64}")


class ExportError(Exception):
    """An export that cannot be written (bad arguments, an existing folder, a missing source)."""


@dataclass(frozen=True)
class Format:
    """What export.json says an exporter's folder is, and which of its files a trainer starts from."""

    name: str  # export.json's "format", e.g. "anime_assets.kohya"
    version: int  # the "format_version" written; a newer one is refused
    listed_since: int = 1  # the first version whose export.json lists its files; older ones are refused
    entry_files: tuple[str, ...] = ()  # moved aside first and in last: absent while a crash leaves a mix


@dataclass
class Previous:
    """The earlier export in `out_dir`, from its export.json."""

    raw: bytes  # export.json as it was (written back when an overwrite is undone)
    files: dict  # path -> {(size, sha256), ...}: what the file there may be (two after a crash)
    dirs: set  # every folder it made


# ------------------------------------------------------------------ the public steps
def check_target(out_dir: Path, fmt: Format, overwrite: bool, digests: bool = True) -> Previous | None:
    """None when `out_dir` is absent or empty (a new export); else, with `overwrite`, the earlier
    export there, checked: ours and well-formed, every listed path inside `out_dir` without links,
    every listed file unchanged.  Anything else raises ExportError.  `digests=False` checks sizes
    only (the early check; `put_in_place` checks again, reading every file)."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir} exists and is not a folder; not touching it")
    if not out_dir.is_dir() or _is_empty_dir(out_dir):
        return None
    if not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty "
                          f"(pass overwrite=True to replace the files an earlier export wrote there)")
    if not os.path.lexists(out_dir / MANIFEST):
        raise ExportError(f"{out_dir} is not an anime_assets export (no {MANIFEST}); "
                          f"refusing to replace it even with overwrite=True")
    prev = _read_previous(out_dir, fmt)
    _check_previous(out_dir, prev, digests)
    return prev


def check_plan(out_dir: Path, prev: Previous, files: Iterable[str], dirs: Iterable[str]) -> None:
    """Nothing of the user's where the new export puts a file or a folder (paths relative to
    `out_dir`): a path there is either absent or a listed (unchanged) file of the earlier export,
    and the folders are real folders.  Else ExportError naming the first one."""
    files, dirs = sorted(files), sorted(dirs)
    _no_links(out_dir, [*files, *dirs], set())
    in_way = [d for d in dirs if os.path.lexists(out_dir / d) and not (out_dir / d).is_dir()]
    in_way += [rel for rel in files if os.path.lexists(out_dir / rel) and rel not in prev.files]
    if in_way:
        raise ExportError(f"{out_dir / in_way[0]}{_more(in_way)} is where the new export writes and was not "
                          f"written by anime_assets; refusing to overwrite it: move it out of {out_dir} and "
                          f"export again")


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A new hidden folder beside `out_dir` (same file system: renames from it are atomic) to write
    the export in; removed when the block raises.  Give it to `put_in_place` after the block."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def put_in_place(tmp: Path, out_dir: Path, fmt: Format, manifest: dict, overwrite: bool) -> None:
    """Write export.json into the finished export staged in `tmp` (`manifest`, the exporter's facts,
    framed by the format and the file list, see the module doc) and put the export at `out_dir`.

    `tmp` is gone afterwards, unless an undo failed: then it holds the old files and the error says
    so.  A new export is one folder rename; over an earlier export it is `_replace_in_place`: the
    user's files stay where they are, so the folder cannot be swapped."""
    try:
        files, dirs = _write_manifest(tmp, fmt, manifest)
        prev = check_target(out_dir, fmt, overwrite)  # again, reading every listed file: things change meanwhile
        if prev is None:
            if out_dir.is_dir():
                out_dir.rmdir()
            os.rename(tmp, out_dir)
            return
        check_plan(out_dir, prev, [e["path"] for e in files], dirs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_in_place(tmp, out_dir, fmt, prev, files, dirs)


def _write_manifest(tmp: Path, fmt: Format, facts: dict) -> tuple[list[dict], list[str]]:
    """export.json in `tmp`: the format first, the exporter's `facts`, then the state and the lists
    of what `tmp` holds (what a later overwrite may replace); returns those lists."""
    files, dirs = inventory(tmp)
    manifest = {"format": fmt.name, "format_version": fmt.version, **facts,
                "state": "complete", "files": files, "dirs": dirs}
    (tmp / MANIFEST).write_bytes(_json_bytes(manifest))
    return files, dirs


def inventory(root: Path) -> tuple[list[dict], list[str]]:
    """Every file under `root` ({path, size, sha256}) but export.json, and every folder, sorted."""
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for d in dirnames:
            dirs.append((here / d).relative_to(root).as_posix())
        for n in sorted(filenames):
            p = here / n
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST:
                files.append({"path": rel, "size": p.stat().st_size, "sha256": _sha256(p)})
    return sorted(files, key=lambda e: e["path"]), sorted(dirs)


# ------------------------------------------------------------------ reading the earlier export's list
def _refuse(out_dir: Path, why: str, hint: str = "") -> ExportError:
    return ExportError(f"{out_dir / MANIFEST} {why}; refusing to touch {out_dir} even with overwrite=True{hint}")


def _more(paths: list) -> str:
    return f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""


def _rel(out_dir: Path, p) -> str:
    """`p` when it is a path an export could have written: relative, "/"-separated, inside
    `out_dir` (no "..", ".", empty part, drive or backslash)."""
    if not isinstance(p, str) or not p:
        raise _refuse(out_dir, f"is malformed (a path that is not a string: {p!r})")
    win = PureWindowsPath(p)
    if (p.startswith("/") or "\\" in p or "\x00" in p or win.drive or win.is_absolute()
            or any(part in ("", ".", "..") for part in p.split("/"))):
        raise _refuse(out_dir, f"names a path that is not a plain relative path inside {out_dir} ({p!r})")
    if p == MANIFEST:
        raise _refuse(out_dir, f"is malformed (it lists {MANIFEST} itself)")
    return p


def _entries(out_dir: Path, items, what: str, unique: bool) -> list[tuple[str, int, str]]:
    if not isinstance(items, list):
        raise _refuse(out_dir, f"is malformed (no list {what!r})")
    rows, seen = [], set()
    for e in items:
        if not isinstance(e, dict) or not {"path", "size", "sha256"} <= set(e):
            raise _refuse(out_dir, f"is malformed (an entry of {what!r} is not {{path, size, sha256}}: {e!r:.80})")
        rel, size, sha = _rel(out_dir, e["path"]), e["size"], e["sha256"]
        if type(size) is not int or size < 0 or not isinstance(sha, str) or not _SHA.fullmatch(sha):
            raise _refuse(out_dir, f"is malformed (bad size or sha256 for {rel!r})")
        if unique and rel in seen:
            raise _refuse(out_dir, f"is malformed ({rel!r} listed twice)")
        seen.add(rel)
        rows.append((rel, size, sha))
    return rows


def _dirs(out_dir: Path, items, what: str) -> set[str]:
    if not isinstance(items, list):
        raise _refuse(out_dir, f"is malformed (no list {what!r})")
    return {_rel(out_dir, d) for d in items}


def _load(out_dir: Path, fmt: Format) -> tuple[bytes, dict]:
    """export.json's bytes and content, when it is a plain file of `fmt` (else ExportError)."""
    path = out_dir / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise _refuse(out_dir, "is not a plain file, so not one of anime_assets' manifests")
    raw = path.read_bytes()
    try:
        m = json.loads(raw.decode("utf-8"))
    except ValueError:
        m = None
    if not isinstance(m, dict) or m.get("format") != fmt.name:
        raise ExportError(f"{out_dir} is not an anime_assets export ({MANIFEST} there has no "
                          f"\"format\": \"{fmt.name}\"); refusing to touch it even with overwrite=True")
    return raw, m


def _check_version(out_dir: Path, fmt: Format, m: dict) -> None:
    v = m.get("format_version")
    if type(v) is not int:
        raise _refuse(out_dir, "is malformed (no integer format_version)")
    if v < fmt.listed_since:
        raise _refuse(out_dir, f"is format_version {v}, which does not list the files it wrote (they cannot be "
                               f"told from yours)", " (move your own files out and delete it, or export elsewhere)")
    if v > fmt.version:
        raise _refuse(out_dir, f"is format_version {v}, newer than this anime_assets ({fmt.version})")


def _read_previous(out_dir: Path, fmt: Format) -> Previous:
    """The earlier export's export.json, when it is one of ours and well-formed (else ExportError)."""
    raw, m = _load(out_dir, fmt)
    _check_version(out_dir, fmt, m)
    state = m.get("state")
    if state not in ("complete", "incomplete"):
        raise _refuse(out_dir, f"is malformed (state {state!r})")
    rows = _entries(out_dir, m.get("files"), "files", unique=True)
    dirs = _dirs(out_dir, m.get("dirs"), "dirs")
    if state == "incomplete":  # an overwrite was interrupted: a file may be the old one or the new one
        before = m.get("previous")
        if not isinstance(before, dict):
            raise _refuse(out_dir, "is malformed (an incomplete export without 'previous')")
        rows += _entries(out_dir, before.get("files"), "previous.files", unique=False)
        dirs |= _dirs(out_dir, before.get("dirs"), "previous.dirs")
    files: dict[str, set] = {}
    for rel, size, sha in rows:
        files.setdefault(rel, set()).add((size, sha))
    return Previous(raw, files, dirs)


# ------------------------------------------------------------------ checking the folder against it
def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and next(p.iterdir(), None) is None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _no_links(out_dir: Path, rels, checked: set[str]) -> None:
    """No symbolic link on the way to any of `rels` (nor at it): a link could lead out of `out_dir`,
    and an export never writes one."""
    root = out_dir.resolve()
    for rel in rels:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in checked:
                continue
            p = out_dir / sub
            if p.is_symlink():
                raise ExportError(f"{p} is a symbolic link (anime_assets never writes one) and {MANIFEST} names "
                                  f"{rel!r} through it; refusing to touch {out_dir}")
            if not os.path.lexists(p):
                break
            checked.add(sub)
        if not (out_dir / rel).resolve().is_relative_to(root):
            raise _refuse(out_dir, f"names a path outside {out_dir} ({rel!r})")


def _check_previous(out_dir: Path, prev: Previous, digests: bool) -> None:
    """Every listed path inside `out_dir` without links, every listed file still the one written
    (missing is fine: nothing to remove).  Reads nothing but sizes when `digests` is False."""
    _no_links(out_dir, [*prev.files, *prev.dirs], set())
    changed = []
    for rel, known in sorted(prev.files.items()):
        try:
            st = os.lstat(out_dir / rel)
        except (FileNotFoundError, NotADirectoryError):  # gone (a parent too, or now a file): nothing to remove
            continue
        if (not stat.S_ISREG(st.st_mode) or st.st_size not in {size for size, _ in known}
                or (digests and (st.st_size, _sha256(out_dir / rel)) not in known)):
            changed.append(rel)
    if changed:
        raise ExportError(f"{out_dir / changed[0]}{_more(changed)} was changed since anime_assets wrote it; "
                          f"refusing to overwrite it: move it out of {out_dir} (or delete it) and export again")


# ------------------------------------------------------------------ the journaled replacement
def _json_bytes(m: dict) -> bytes:
    return (json.dumps(m, indent=1, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _move(src: Path, dst: Path) -> None:
    """One rename within the file system (every step of putting an export in place is one)."""
    os.replace(src, dst)


def _journal(fmt: Format, prev: Previous, files: list[dict], dirs: list[str]) -> dict:
    """export.json while the replacement runs: both lists, so that the next overwrite accepts a
    file matching either and can finish the job after a crash."""
    return {
        "format": fmt.name, "format_version": fmt.version, "state": "incomplete",
        "note": "an export into this folder was interrupted: run it again with overwrite to finish it "
                "(files not listed here are not the export's and are never touched)",
        "files": files, "dirs": dirs,
        "previous": {"files": [{"path": rel, "size": size, "sha256": sha}
                               for rel, known in sorted(prev.files.items()) for size, sha in sorted(known)],
                     "dirs": sorted(prev.dirs)},
    }


def _replace_in_place(tmp: Path, out_dir: Path, fmt: Format, prev: Previous,
                      files: list[dict], dirs: list[str]) -> None:
    """Replace the earlier export's files in `out_dir` by the ones staged in `tmp`, touching nothing else.

    Why not a folder swap: the user's files (a trained LoRA in output/, extra images in img/<folder>/)
    live inside `out_dir`, and carrying them into the new folder would put them, for a while, in a
    hidden temporary folder that an interrupted run leaves behind.  Instead every step is one rename
    of one of our files on the same file system, journaled in export.json so that any point of it
    is either undone (an error) or finished by the next overwrite (a crash):

    1. export.json becomes the journal: state "incomplete", the new lists and, as "previous", the
       old ones (a later overwrite accepts a file matching either, so it can finish the job);
    2. the old files move aside into `tmp/.replaced/`, the entry files first: from here on no
       trainer config points at a half-replaced folder;
    3. the new folders are made and the new files moved in, the entry files last;
    4. the complete export.json replaces the journal: the commit;
    5. the old export's folders the new one does not use are removed when empty, then `tmp`.
    """
    aside = tmp / _ASIDE
    (tmp / _JOURNAL).write_bytes(_json_bytes(_journal(fmt, prev, files, dirs)))
    done: list[tuple[str, str]] = []  # the steps taken, for the undo: ("journal"|"aside"|"mkdir"|"placed", path)
    try:
        _move(tmp / _JOURNAL, out_dir / MANIFEST)
        done.append(("journal", MANIFEST))
        _move_aside(out_dir, aside, fmt, prev, done)
        _make_dirs(out_dir, dirs, done)
        _move_in(tmp, out_dir, fmt, files, done)
        _move(tmp / MANIFEST, out_dir / MANIFEST)
    except BaseException as err:
        if _rollback(tmp, out_dir, aside, done, prev.raw):
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        raise ExportError(f"the export into {out_dir} failed ({err}) and could not be undone in full: the old "
                          f"export's files are in {aside}; export again with overwrite to finish it") from err
    _remove_unused_dirs(out_dir, prev.dirs - set(dirs))
    shutil.rmtree(tmp, ignore_errors=True)


def _move_aside(out_dir: Path, aside: Path, fmt: Format, prev: Previous, done: list) -> None:
    for rel in sorted(prev.files, key=lambda r: (r not in fmt.entry_files, r)):
        if os.path.lexists(out_dir / rel):
            (aside / rel).parent.mkdir(parents=True, exist_ok=True)
            _move(out_dir / rel, aside / rel)
            done.append(("aside", rel))


def _make_dirs(out_dir: Path, dirs: list[str], done: list) -> None:
    for d in dirs:  # sorted: a parent before its children
        p = out_dir / d
        if not os.path.lexists(p):
            p.mkdir()
            done.append(("mkdir", d))
        elif p.is_symlink() or not p.is_dir():
            raise ExportError(f"{p} appeared during the export and is not a folder; undoing it")


def _move_in(tmp: Path, out_dir: Path, fmt: Format, files: list[dict], done: list) -> None:
    for e in sorted(files, key=lambda e: (e["path"] in fmt.entry_files, e["path"])):
        dst = out_dir / e["path"]
        if os.path.lexists(dst):  # os.replace would clobber whatever appeared there meanwhile
            raise ExportError(f"{dst} appeared during the export (not written by anime_assets); undoing it")
        _move(tmp / e["path"], dst)
        done.append(("placed", e["path"]))


def _remove_unused_dirs(out_dir: Path, unused: set[str]) -> None:
    for d in sorted(unused, key=lambda d: -d.count("/")):  # deepest first
        p = out_dir / d
        if p.is_dir() and not p.is_symlink():
            try:
                p.rmdir()  # only when empty: a folder holding anything of the user's stays
            except OSError:
                pass


def _rollback(tmp: Path, out_dir: Path, aside: Path, done: list[tuple[str, str]], old_manifest: bytes) -> bool:
    """Undo `_replace_in_place`'s steps in reverse; True when all of them were undone (then the old
    export.json is written back).  Otherwise the journal stays: the next overwrite finishes the job."""
    ok = True
    for kind, rel in reversed(done):
        try:
            if kind == "placed":
                _move(out_dir / rel, tmp / rel)
            elif kind == "mkdir":
                (out_dir / rel).rmdir()
            elif kind == "aside":
                if os.path.lexists(out_dir / rel):
                    ok = False
                else:
                    _move(aside / rel, out_dir / rel)
        except OSError:
            ok = False
    if ok and done:
        try:
            (tmp / _RESTORE).write_bytes(old_manifest)
            _move(tmp / _RESTORE, out_dir / MANIFEST)
        except OSError:
            ok = False
    return ok
