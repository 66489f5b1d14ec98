"""The Dagster instance as the command line uses it: created once under a lock, dead runs failed.

Two faults a new user meets in the first week live here:

* Three commands started at once in a fresh DAGSTER_HOME each create the SQLite storage and
  stamp its alembic version; the race left two rows in `alembic_version` and the instance was
  unusable for good. `open_instance` creates every storage under one file lock, so only the
  first process creates and the others find finished databases.
* A run whose process died (kill -9, a closed terminal, an OOM kill) stays STARTED for ever,
  and with `max_concurrent_runs: 1` the daemon never launches another. Dagster's own run
  monitoring cannot see it: the default run launcher has no worker health check, and runs the
  CLI executes in-process have no launcher at all. `fail_dead_runs` finds the process that ran
  each in-progress run (Dagster's own engine events record its pid) and marks the run failed
  when that process is gone. The CLI calls it when it starts and the `dead_runs` sensor calls it
  in the daemon.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

LOCK_NAME = ".anime_assets-instance.lock"
# A process that started more than this after the run's pid was recorded is another process that
# got the same pid: the run's own process is gone.
PID_REUSE_SLACK_S = 2.0
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the kernel even if this process is killed
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_instance() -> dg.DagsterInstance:
    """The instance of $DAGSTER_HOME, its storage created (or migrated) by one process at a time."""
    home = Path(os.environ.get("DAGSTER_HOME") or ".").expanduser()
    with _file_lock(home / LOCK_NAME):
        instance = dg.DagsterInstance.get()
        # Touch every storage while the lock is held: each creates its tables on first use.
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions("episodes")
        instance.all_instigator_state()
    return instance


@dataclass(frozen=True)
class RunOwner:
    pid: int
    since: float  # wall-clock time at which the process was known to run this run


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def process_start_time(pid: int) -> float | None:
    """Wall-clock start of process `pid`, or None when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (not Linux): existence only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def run_owner(instance: dg.DagsterInstance, run_id: str) -> RunOwner | None:
    """The process Dagster recorded as executing the run: the first engine event with a pid (the run
    worker, or the CLI's in-process executor; a multiprocess executor's step processes come later)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    for record in records:
        event = record.event_log_entry.dagster_event
        pid = event.engine_event_data.metadata.get("pid") if event and event.engine_event_data else None
        if pid is not None:
            return RunOwner(int(pid.value), record.event_log_entry.timestamp)
    return None


def is_gone(owner: RunOwner) -> bool:
    started = process_start_time(owner.pid)
    return started is None or started > owner.since + PID_REUSE_SLACK_S


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every in-progress run whose process is gone; returns their ids.

    Runs whose process is unknown (not started yet, or run on another machine) are left to
    Dagster's run monitoring (start and cancel timeouts, see dagster.yaml)."""
    failed = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS)):
        run = record.dagster_run
        owner = run_owner(instance, run.run_id)
        if owner is None or not is_gone(owner):
            continue
        instance.report_run_failed(run, f"the process that ran it (pid {owner.pid}) is gone: killed, or its "
                                        "terminal was closed; marked failed by anime_assets")
        failed.append(run.run_id)
    return failed
