"""Runs whose process died: found and marked failed, so the run history stops showing them as running.

A run killed with SIGKILL (or by the out-of-memory killer, or a reboot) never writes its end, so it
stays STARTED for ever. Dagster's run monitoring (enabled in dagster_project/dagster.yaml, done by
the daemon of ``pixelsift ui``) fails runs stuck STARTING and cancels runs stuck CANCELING, but
with the default run launcher it cannot tell whether a STARTED run's worker is alive, and
``pixelsift run`` executes in its own process with no daemon at all. So at start, ``pixelsift run``
and ``pixelsift ui`` look for unfinished runs whose process is gone and mark them failed.

A run's process is the ``pixelsift/pid`` tag that ``pixelsift run`` puts on its runs (with
``pixelsift/host``), else the process id Dagster itself records in the run's engine events
("Started process for run (pid: …)"), which for runs launched by the UI is a process on this
machine. A run of another host, or one whose process is unknown, is never touched.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

PID_TAG = "pixelsift/pid"
HOST_TAG = "pixelsift/host"
# When the process started, in clock ticks since boot (Linux): a later process that reuses the pid
# (a container's pixelsift is often pid 1 every time) has another, and wall-clock changes do not move it.
PID_START_TAG = "pixelsift/pid_start"
# NOT_STARTED counts only with a known process: runs the UI is still launching have none yet.
UNFINISHED = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
              DagsterRunStatus.CANCELING]
ENDED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
# For runs known only from Dagster's engine events: a process that started this long after the
# run's worker reported its pid only reused the number (generous, as the wall clock may be adjusted).
_REUSED_AFTER_S = 60.0


def process_tags() -> dict[str, str]:
    """Tags for a run this process executes, so that a later start can tell whether it is still running."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    own = _proc_stat(os.getpid())
    if own is not None:
        tags[PID_START_TAG] = str(own[1])
    return tags


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    job_name: str
    status: DagsterRunStatus
    partition: str | None
    pid: int

    @property
    def marked_as(self) -> str:
        """What marking it makes it: a run that was being canceled ends canceled, any other failed."""
        return "canceled" if self.status == DagsterRunStatus.CANCELING else "failed"

    @property
    def reason(self) -> str:
        return (f"its process (pid {self.pid} on {socket.gethostname()}) is gone: it was killed (SIGKILL, out of "
                "memory) or the machine restarted before the run could record its end")


def stale_runs(instance: DagsterInstance) -> list[StaleRun]:
    """Unfinished runs of ``instance`` whose process no longer exists on this machine, oldest first."""
    stale = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=UNFINISHED), ascending=True):
        run = record.dagster_run
        process = _run_process(instance, run)
        if process is not None and not process.alive():
            stale.append(StaleRun(run.run_id, run.job_name, run.status, run.tags.get("dagster/partition"),
                                  process.pid))
    return stale


def fail_stale_runs(instance: DagsterInstance) -> list[StaleRun]:
    """Mark each stale run failed (a stale CANCELING run canceled), with the reason; returns them."""
    marked = []
    for stale in stale_runs(instance):
        run = instance.get_run_by_id(stale.run_id)
        if run is None or run.status not in UNFINISHED:  # it ended while we looked
            continue
        message = f"pixelsift marked this run {stale.marked_as}: {stale.reason}."
        if stale.marked_as == "canceled":
            instance.report_run_canceled(run, message)
        else:
            instance.report_run_failed(run, message)
        marked.append(stale)
    return marked


def free_slots_of_ended_runs(instance: DagsterInstance) -> list[str]:
    """Free the concurrency-pool slots (the large-model slot) still held by runs that have ended;
    returns those runs' ids.

    A run frees its slot when its step ends, but not when its process is killed mid-step. The daemon
    of ``pixelsift ui`` frees such slots a minute after the run is marked ended
    (``free_slots_after_run_end_seconds`` in dagster.yaml); ``pixelsift run`` has no daemon, and
    without this its next large-model step would wait for ever for a slot nobody holds."""
    ended = ended_runs_holding_slots(instance)
    for run in ended:
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return [run.run_id for run in ended]


def ended_runs_holding_slots(instance: DagsterInstance) -> list:
    """The runs (DagsterRun) that have ended but still hold a concurrency-pool slot; changes nothing."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    holders = storage.get_concurrency_run_ids()
    if not holders:
        return []
    records = instance.get_run_records(filters=RunsFilter(run_ids=list(holders), statuses=ENDED))
    return [record.dagster_run for record in records]


@dataclass(frozen=True)
class _Process:
    """The process that executes a run, as far as the run history tells."""

    pid: int
    start_ticks: int | None = None  # from PID_START_TAG
    running_at: float | None = None  # epoch seconds of an event it logged

    def alive(self) -> bool:
        if os.name == "nt":
            return True  # os.kill(pid, 0) would terminate it there; never guess
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        stat = _proc_stat(self.pid)
        if stat is None:
            return True  # no /proc (macOS): that the pid exists is all we know
        state, start_ticks = stat
        if state in "ZX":  # killed, only not yet reaped by its parent
            return False
        if self.start_ticks is not None:
            return start_ticks == self.start_ticks
        if self.running_at is not None:
            return _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK") <= self.running_at + _REUSED_AFTER_S
        return True


def _run_process(instance: DagsterInstance, run) -> _Process | None:
    """The run's process, or None when it is unknown or on another host."""
    if PID_TAG in run.tags:
        pid, ticks = _number(run.tags[PID_TAG]), _number(run.tags.get(PID_START_TAG))
        if pid is None or run.tags.get(HOST_TAG) != socket.gethostname():
            return None
        return _Process(pid, start_ticks=ticks)
    if run.status == DagsterRunStatus.NOT_STARTED:
        return None
    found = None
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        pid = _number(data.metadata["pid"].value) if data and "pid" in data.metadata else None
        # Run-level events only (step subprocesses log their own pids); the last is the current worker.
        if pid is not None and entry.step_key is None:
            found = _Process(pid, running_at=entry.timestamp)
    return found


def _number(text) -> int | None:
    # Tags can be set by hand in the UI's launchpad: a malformed one means "unknown", not a crash.
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start in clock ticks since boot) of ``pid`` from Linux's /proc; None without it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The fields after the command name, which is in parentheses and may itself hold spaces or ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[19])  # proc(5) fields 3 and 22


def _boot_time() -> float:
    line = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    return float(line.split()[1])
