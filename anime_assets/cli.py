"""`anime-assets`: ingest episodes and backfill shots from the command line, in-process.

Runs are recorded in the same Dagster instance the UI reads ($DAGSTER_HOME), so everything
done here shows in the UI's runs, partitions and asset pages.

  anime-assets ingest PATH... [--episode KEY]   register episodes and materialise every asset
  anime-assets backfill EPISODE...              re-run the real shot partitions of episodes
  anime-assets status                           episodes, shots and LanceDB rows
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path



def _dagster_home() -> None:
    """Use the project's dagster.yaml when run from the project root; else a home under the data root."""
    if os.environ.get("DAGSTER_HOME"):
        return
    if Path("dagster.yaml").is_file() and Path("workspace.yaml").is_file():
        os.environ["DAGSTER_HOME"] = str(Path.cwd())
        return
    from anime_assets import settings

    home = settings.data_root() / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    os.environ["DAGSTER_HOME"] = str(home)


class _Progress:
    """One tqdm bar per stage, fed by anime_assets.progress.report from inside the assets."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        try:
            self._update(stage, done, total)
        except OSError:  # the terminal is gone (SIGHUP): progress must never fail the step
            self.enabled, self.bar, self.stage = False, None, None

    def _update(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=max(total, done), desc=stage, unit="frame" if "decode" in stage else "shot",
                            dynamic_ncols=True, leave=True)
        if total > self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= self.bar.total:
            self.close()  # the stage is over; its rate must not include the wait for the next one

    def close(self) -> None:
        if self.bar is not None:
            try:
                self.bar.close()
            except OSError:
                pass
        self.bar = None
        self.stage = None


@contextmanager
def _progress_bars(quiet: bool):
    """Progress bars for the assets run in-process during the `with` block."""
    from anime_assets import progress

    bar = _Progress(enabled=not quiet)
    progress.set_listener(bar)
    try:
        yield bar
    finally:
        bar.close()
        progress.set_listener(None)


def _say(msg: str) -> None:
    try:
        print(msg, file=sys.stderr, flush=True)
    except OSError:  # the terminal is gone (SIGHUP): the run log in the instance still has it
        pass


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or a closed terminal stopped a run; the CLI stops with one line."""


def _root_cause(err):
    """The innermost error of a Dagster error chain (a step error wraps the real OSError, ...)."""
    while err is not None and (err.cause or err.context):
        err = err.cause or err.context
    return err


def failure_line(event) -> str:
    """One line for a failed step: the asset's own message, else the root cause (disk full named)."""
    data = event.step_failure_data
    user = data.user_failure_data
    if user and user.description and user.description.strip():
        return user.description.strip().splitlines()[-1]
    root = _root_cause(data.error)
    if root is None:
        return "failed"
    text = " ".join(root.message.split()) or root.cls_name
    if "[Errno 28]" in text or "No space left on device" in text:
        return f"disk full: {text}; free some space and run the same command again"
    return text


def _materialize(selection, instance, *, partition_key=None, tags=None) -> bool:
    import dagster as dg

    from anime_assets.definitions import ALL_ASSETS, resources
    from anime_assets.defs.sensors import CLI_TAG

    result = dg.materialize(
        ALL_ASSETS, selection=selection, instance=instance, resources=resources(),
        partition_key=partition_key, tags={CLI_TAG: "cli", **(tags or {})}, raise_on_error=False,
        # The full event log is in the instance (and the UI); the terminal shows progress and problems.
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    if _interrupt_pending():  # Dagster drops a Ctrl-C that lands after a run's last step
        raise Interrupted(result.run_id[:8] if result.success else "")
    if not result.success:
        for ev in result.all_events:
            if ev.is_step_failure:
                root = _root_cause(ev.step_failure_data.error)
                if root is not None and root.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                    raise Interrupted(ev.step_key)
                _say(f"error: {failure_line(ev)}")
    return result.success


def _range_run(instance, episode: str, assets, say_shots: bool = False) -> bool:
    """One run of shot-level `assets` over exactly the episode's real shots."""
    from anime_assets.defs.partitions import shot_range_tags
    from anime_assets.defs.resources import StorageResource
    from anime_assets.stages.shot_boundaries import load_shots

    n = len(load_shots(StorageResource().media(), episode)["shots"])
    if say_shots:
        _say(f"{episode}: {n} shots")
    return _materialize(assets, instance, tags=shot_range_tags(episode, n))


def _shots_run(instance, episode: str) -> bool:
    from anime_assets.defs.sensors import SHOT_ASSETS

    return _range_run(instance, episode, SHOT_ASSETS, say_shots=True)


def _layers_run(instance, episode: str) -> bool:
    from anime_assets.defs.sensors import LAYER_ASSETS

    return _range_run(instance, episode, LAYER_ASSETS)


def _registry_run(instance, episode: str) -> bool:
    from anime_assets.defs.characters import character_registry

    return _materialize([character_registry.key], instance, partition_key=episode)


def _clusters_run(instance, episode: str) -> bool:
    from anime_assets.defs.clusters import episode_clusters, season_clusters, shot_repeats

    return (_materialize([episode_clusters.key], instance, partition_key=episode)
            and _materialize([season_clusters.key, shot_repeats.key], instance))


def _after_shot_boundaries(instance, episode: str) -> bool:
    """Every stage after the episode run, in order: shots, clusters, layers, characters."""
    return (_shots_run(instance, episode) and _clusters_run(instance, episode)
            and _layers_run(instance, episode) and _registry_run(instance, episode))


def _instance():
    """The Dagster instance, created safely under concurrency; runs whose process died marked failed."""
    from anime_assets.instance import fail_dead_runs, open_instance

    instance = open_instance()
    dead = fail_dead_runs(instance)
    if dead:
        _say(f"marked {len(dead)} run(s) failed whose process was gone (killed or terminal closed)")
    return instance


def _ingest_one(instance, src: Path, episode: str) -> bool:
    """Register one episode and run every stage; a new episode whose own file fails is unregistered."""
    from anime_assets.defs.partitions import EPISODES
    from anime_assets.defs.resources import StorageResource
    from anime_assets.defs.sensors import EPISODE_ASSETS

    inbox = StorageResource().inbox()
    _, placed_here = inbox.place(src, episode)  # compares with a file already there (hashes at most once)
    new = episode not in instance.get_dynamic_partitions(EPISODES)
    if new:
        instance.add_dynamic_partitions(EPISODES, [episode])
    _say(f"{episode}: registered ({src.name})")
    if not _materialize(EPISODE_ASSETS, instance, partition_key=episode):
        if new:  # the file itself is unusable: leave no trace of it
            instance.delete_dynamic_partition(EPISODES, episode)
            inbox.forget(episode, remove_file=placed_here)
            for asset in ("frame_index", "shot_boundaries"):
                StorageResource().media().remove_partition(asset, episode)
            _say(f"{episode}: not registered (its file failed the first stage)")
        return False
    ok = _after_shot_boundaries(instance, episode)
    if not ok:
        _say(f"{episode}: stopped; finished stages are kept. Fix the cause and run the same command again")
    return ok


def cmd_ingest(args) -> int:
    from anime_assets.defs.resources import StorageResource
    from anime_assets.keys import episode_key_from_filename, validate_key
    from anime_assets.storage.inbox import InboxError
    from anime_assets.vision.decode import VideoError, probe

    if args.episode is not None and len(args.paths) > 1:
        _say("error: --episode names one episode; pass one PATH with it")
        return 2
    instance = _instance()
    failures = 0
    with _progress_bars(args.quiet) as bar:
        for raw in args.paths:
            src = Path(raw)
            try:
                episode = (validate_key(args.episode, "episode") if args.episode is not None
                           else episode_key_from_filename(src.name))
                info = probe(src)
                if info.rotation_tag:
                    _say(f"warning: {src.name}: a bare 'rotate' tag of {info.rotation_tag} degrees (no display "
                         "matrix) is not applied, as players ignore it too; frames are stored as coded")
                with StorageResource().inbox().working_on(episode):
                    ok = _ingest_one(instance, src, episode)
            except (VideoError, InboxError, ValueError) as e:
                _say(f"error: {e}")
                ok = False
            except OSError as e:  # unreadable file, full disk outside a run: one line, not a traceback
                _say(f"error: {e.filename or src}: {e.strerror or e}")
                ok = False
            bar.close()
            if ok:
                _say(f"{episode}: done")
            failures += not ok
    return 1 if failures else 0


def cmd_backfill(args) -> int:
    from anime_assets.defs.partitions import EPISODES
    from anime_assets.defs.resources import StorageResource
    from anime_assets.keys import validate_key

    instance = _instance()
    known = set(instance.get_dynamic_partitions(EPISODES))
    failures = 0
    with _progress_bars(args.quiet) as bar:
        for episode in args.episodes:
            try:
                validate_key(episode, "episode")
                if episode not in known:
                    raise ValueError(f"episode {episode} is not registered (known: {', '.join(sorted(known)) or 'none'})")
                with StorageResource().inbox().working_on(episode):
                    ok = _after_shot_boundaries(instance, episode)
            except (ValueError, FileNotFoundError) as e:
                _say(f"error: {e}")
                ok = False
            bar.close()
            failures += not ok
    return 1 if failures else 0


def cmd_status(args) -> int:
    from anime_assets.defs.partitions import EPISODES
    from anime_assets.defs.resources import StorageResource
    from anime_assets.stages.shot_boundaries import load_shots

    instance = _instance()
    storage = StorageResource()
    tables = storage.tables()
    for episode in instance.get_dynamic_partitions(EPISODES):
        try:
            n = len(load_shots(storage.media(), episode)["shots"])
        except FileNotFoundError:
            n = None
        try:
            tables.open_frames()
            rows = tables.count(episode)
        except Exception:  # no table yet
            rows = 0
        stale = _stale_shots(instance, episode, n) if n else {}
        note = "\tstale=" + ",".join(f"{a}:{k}" for a, k in stale.items()) if stale else ""
        print(f"{episode}\tshots={n if n is not None else '-'}\trows={rows}{note}")
    return 0


def _stale_shots(instance, episode: str, n: int) -> dict[str, int]:
    """Asset -> how many of the episode's shots are stale (made with another code version, i.e.
    another model): the UI shows this only on each partition's own page (a Dagster limit for
    partitioned assets); `backfill` re-runs them."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    from anime_assets.definitions import defs
    from anime_assets.defs.sensors import LAYER_ASSETS, SHOT_ASSETS

    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    out = {}
    for key in (*SHOT_ASSETS, *LAYER_ASSETS):
        done = instance.get_materialized_partitions(key)
        count = sum(resolver.get_status(key, p) == StaleStatus.STALE for p in
                    (f"{episode}|s{i:04d}" for i in range(n)) if p in done)
        if count:
            out[key.to_user_string()] = count
    return out


def cmd_models(args) -> int:
    from anime_assets.models import manage

    try:
        if args.action == "list":
            for m in manage.statuses(args.names):
                print(f"{m.name}\t{m.task}\t{m.state or ('present' if m.available else 'missing')}\t{m.source}\t{m.detail}")
            if not args.names:
                from anime_assets.models import selection

                print("\n# what each stage runs here (choose with ANIME_ASSETS_<STAGE>; auto = best present)")
                for stage, r in selection.resolve_all().items():
                    why = f"{r.choice}: {r.reason}" if r.reason else r.choice
                    print(f"stage:{stage}\t{r.model_id}\t{why}")
            return 0
        if args.action == "verify":
            rows = manage.verify(args.names)
            for name, path, verdict in rows:
                print(f"{name}\t{verdict}\t{path}")
            if not rows:
                print("no model files present to verify")
            return 1 if any(v != "ok" for _, _, v in rows) else 0  # mismatch, corrupt or unverified
        rows = manage.pull(args.names)
        for name, ok, what in rows:
            print(f"{name}\t{'present' if ok else 'missing'}\t{what}")
        return 0 if all(ok for _, ok, _ in rows) else 1
    except ValueError as e:
        _say(f"error: {e}")
        return 2


def cmd_characters(args) -> int:
    """The character registry: list, name, merge, split (the same edits as the UI's edit_characters job)."""
    from anime_assets.defs.resources import StorageResource
    from anime_assets.stages import characters as chs
    from anime_assets.storage.media import MediaStore

    storage = StorageResource()
    reg = chs.registry(storage.tables().db_uri)
    try:
        if args.action == "list":
            for r in chs.listing(reg):
                sample = MediaStore.path_from_uri(r["sample"]) if r["sample"] else "-"
                print(f"{r['id']}\t{r['name'] or '(unnamed)'}\tinstances={r['instances']}\t"
                      f"episodes={','.join(r['episodes'])}\toutfits={','.join(r['outfits'])}\t{sample}\t"
                      f"{'face seen' if r['face_seen'] else 'candidate: no face seen'}")
            return 0
        if len(args.args) != 2:
            _say(f"error: characters {args.action} takes two arguments (see --help)")
            return 2
        a, b = args.args
        if args.action == "name":
            print(f"{chs.name_character(reg, a, b)}\t{b}")
        elif args.action == "merge":
            print(f"{a} -> {chs.merge_characters(reg, storage.media(), a, b)}")
        else:
            print(f"{b} -> {chs.split_outfit(reg, storage.media(), a, b)}")
        return 0
    except chs.RegistryEditError as e:
        _say(f"error: {e}")
        return 2


def cmd_export(args) -> int:
    """Query the dataset and write it in a trainer's layout (kohya-ss sd-scripts or musubi-tuner)."""
    from anime_assets.export import ExportError, export_kohya
    from anime_assets.query import QueryError, open_dataset

    try:
        ds = open_dataset(args.data)
        samples = ds.query(character=args.character, outfit=args.outfit, expression=args.expression,
                           pose=args.pose or None, episode=args.episode or None, effects=args.effects,
                           min_quality=args.min_quality, exclude_repeats=args.exclude_repeats, text=args.text,
                           level="frame" if args.crop == "frame" else "instance", balance=args.balance,
                           limit=args.limit)
        if not samples:
            _say("error: no samples match the query")
            return 1
        repeats = args.repeats if args.repeats == "auto" else int(args.repeats)
        report = export_kohya(samples, Path(args.out), name=args.name, repeats=repeats, crop=args.crop,
                              trigger=args.trigger, layout=args.layout, overwrite=args.overwrite,
                              manifest_extra={"table_versions": ds.versions, "db_uri": ds.db_uri,
                                              "query": {k: v for k, v in vars(args).items() if k != "func"}})
    except (QueryError, ExportError, ValueError) as e:
        _say(f"error: {e}")
        return 2
    for group, (count, reps) in report.groups.items():
        print(f"{reps}_{group}\t{count} images")
    print(f"{report.n_images} images, {report.n_masks} masks -> {report.out_dir}; config {report.config_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*is currently in beta.*")  # BackfillPolicy: stable enough here
    parser = argparse.ArgumentParser(prog="anime-assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", help="register episode files and materialise every asset in-process")
    p.add_argument("paths", nargs="+", help="video files")
    p.add_argument("--episode", help="episode key (default: derived from the file name)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ingest)
    p = sub.add_parser("backfill", help="re-run the real shot partitions of these episodes (one run each)")
    p.add_argument("episodes", nargs="+")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_backfill)
    p = sub.add_parser("status", help="episodes, shots and LanceDB rows")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("models", help="models the pipeline can use: list (what is here), verify (sha256), "
                                      "pull (download missing hub weights)")
    p.add_argument("action", choices=["list", "verify", "pull"])
    p.add_argument("names", nargs="*", help="registry names (default: all)")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("characters", help="the character registry: list | name ID NAME | merge ID TARGET | "
                                          "split ID OUTFIT (ids or names)")
    p.add_argument("action", choices=["list", "name", "merge", "split"])
    p.add_argument("args", nargs="*")
    p.set_defaults(func=cmd_characters)
    p = sub.add_parser("export", help="write a trainer dataset: export kohya OUT --character NAME ...")
    p.add_argument("format", choices=["kohya"])
    p.add_argument("out", help="output folder (a new one is written atomically; with --overwrite only the "
                                  "earlier export's own files are replaced)")
    p.add_argument("--data", help="data root or LanceDB URI (default: $ANIME_ASSETS_DATA or ./data)")
    p.add_argument("--character", help="registry id or name")
    p.add_argument("--outfit")
    p.add_argument("--expression", help="neutral, happy, laughing, sad, crying, angry, surprised, embarrassed, scared")
    p.add_argument("--pose", action="append", help="pose tag every sample must have (repeatable): 'full body', ...")
    p.add_argument("--episode", action="append")
    fx = p.add_mutually_exclusive_group()
    fx.add_argument("--effects", dest="effects", action="store_true", default=None, help="only frames with effects")
    fx.add_argument("--no-effects", dest="effects", action="store_false", help="only frames without effects")
    p.add_argument("--min-quality", type=float)
    p.add_argument("--exclude-repeats", action="store_true", help="leave out openings, endings and other repeats")
    p.add_argument("--text", help="rank by CLIP similarity to this text (needs CLIP vectors)")
    p.add_argument("--balance", choices=["episode", "shot"])
    p.add_argument("--limit", type=int)
    p.add_argument("--crop", choices=["instance", "frame"], default="instance")
    p.add_argument("--layout", choices=["sd-scripts", "musubi"], default="sd-scripts")
    p.add_argument("--repeats", default="auto", help="auto (balance the groups) or a number")
    p.add_argument("--trigger", help="trigger word put first in every caption")
    p.add_argument("--name", help="folder name when samples have no character")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files an earlier anime_assets export wrote in OUT (files you added are "
                        "kept; refused if you edited one of its files)")
    p.set_defaults(func=cmd_export)
    args = parser.parse_args(argv)
    if args.command in ("models", "export"):
        return args.func(args)
    _dagster_home()
    with _hangup_as_interrupt():
        try:
            return args.func(args)
        except (Interrupted, KeyboardInterrupt) as e:
            where = f" in {e}" if isinstance(e, Interrupted) and str(e) else ""
            _say(f"interrupted{where}: the run is marked failed, finished partitions are kept and nothing "
                 "is half-written; run the same command again to finish")
            return 130


_WAKEUP: list[int] = []  # read end of the pipe the interpreter writes every signal's number into


def _interrupt_pending() -> bool:
    """Whether SIGINT or SIGTERM arrived since the last look. Dagster turns a signal into an
    interrupt only at its own checkpoints and forgets one that lands between the last step and
    the end of a run; the interpreter's wakeup pipe sees every signal, whoever handles it."""
    import signal

    if not _WAKEUP:
        return False
    try:
        got = os.read(_WAKEUP[0], 512)
    except BlockingIOError:
        return False
    return any(b in (signal.SIGINT, signal.SIGTERM) for b in got)


@contextmanager
def _hangup_as_interrupt():
    """A closed terminal (SIGHUP) stops a command the way Ctrl-C does, so its run is marked failed
    instead of the process dying mid-step with the run left STARTED; and no Ctrl-C is lost."""
    import signal

    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    _WAKEUP[:] = [r]
    previous = signal.signal(signal.SIGHUP, lambda *_: signal.raise_signal(signal.SIGINT)) \
        if hasattr(signal, "SIGHUP") else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
        signal.set_wakeup_fd(previous_fd)
        _WAKEUP.clear()
        os.close(r)
        os.close(w)


if __name__ == "__main__":
    sys.exit(main())
