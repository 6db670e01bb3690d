"""How long a run started from the Dagster UI takes, and how much of it is process start-up.

Starts the UI as `pixelsift ui --models tiny` does (its own temporary DAGSTER_HOME, warehouse and
reports), registers the batch and launches what the catalog's "Materialize all" sends: a
`launchPipelineExecution` of the implicit asset job over every asset, tagged with the partition.
Then it reads the run's event log: each step's start-up (worker launched until the step starts,
the imports of a fresh process) and compute, and the share of the run no step was computing.

Example: python -m benchmarks.ui_run --batch sample
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click

from benchmarks.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
LOCATION = "pixelsift"
IMPLICIT_ASSET_JOB = "__ASSET_JOB"  # the job "Materialize" runs, whatever the selection
ENDED = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass
class UIServer:
    """A running `pixelsift ui`: its URL, its environment (DAGSTER_HOME, warehouse, reports)."""

    url: str
    env: dict[str, str]
    process: subprocess.Popen
    log: Path

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.load(response)
        if reply.get("errors"):
            raise RuntimeError(f"GraphQL errors: {reply['errors']}")
        return reply["data"]

    def wait_until_loaded(self, timeout: float) -> None:
        """Until the code location `pixelsift` has loaded (the webserver answers before it has)."""
        deadline = time.monotonic() + timeout
        query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
        query += "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pixelsift ui exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                entries = self.graphql(query, timeout=10)["workspaceOrError"]["locationEntries"]
            except OSError:
                entries = []
            for entry in entries:
                loaded = entry["locationOrLoadError"] or {}
                if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
                    if loaded.get("__typename") == "PythonError":
                        raise RuntimeError(f"code location failed to load: {loaded['message']}")
                    return
            time.sleep(1)
        raise TimeoutError(f"the UI did not load the code location in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@contextmanager
def ui_server(workdir: Path, models: str = "tiny", images_root: Path | None = None,
              extra_env: dict[str, str] | None = None, timeout: float = 600) -> Iterator[UIServer]:
    """`pixelsift ui` on a free 127.0.0.1 port, with everything it writes under ``workdir``."""
    port = free_port()
    tiny_models = Path(os.environ.get("PIXELSIFT_TINY_MODELS_DIR", ROOT / "data/models/tiny")).resolve()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        "PIXELSIFT_WAREHOUSE_DIR": str(workdir / "warehouse"),
        "PIXELSIFT_REPORTS_DIR": str(workdir / "reports"),
        "PIXELSIFT_IMAGES_ROOT": str((images_root or ROOT / "data/images").resolve()),
        "PIXELSIFT_TINY_MODELS_DIR": str(tiny_models),  # built once, shared with the tests
        **(extra_env or {}),
    }
    log = workdir / "ui.log"
    with open(log, "wb") as out:
        # A session of its own, so that stopping it stops the daemon and code server it starts too.
        process = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "ui", "--models", models,
                                    "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = UIServer(f"http://127.0.0.1:{port}", env, process, log)
    try:
        server.wait_until_loaded(timeout)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)  # dagster dev stops its daemon and code server on SIGINT
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


ADD_PARTITION = """mutation($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename ... on PythonError { message } ... on UnauthorizedError { message } } }"""

ASSET_KEYS = "{ assetNodes { assetKey { path } isPartitioned } }"

LAUNCH = """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""

RUN_STATUS = 'query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }'


def materialize_all(server: UIServer, batch: str) -> str:
    """Register ``batch`` and launch every partitioned asset of it as the catalog's "Materialize all"
    does; return the run id."""
    repo = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
    added = server.graphql(ADD_PARTITION, {"selector": repo, "name": "batch", "key": batch})["addDynamicPartition"]
    if added["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
        raise RuntimeError(f"could not add partition {batch!r}: {added}")
    keys = [node["assetKey"] for node in server.graphql(ASSET_KEYS)["assetNodes"] if node["isPartitioned"]]
    params = {
        "selector": {**repo, "pipelineName": IMPLICIT_ASSET_JOB, "assetSelection": keys},
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": batch}]},
        "runConfigData": "{}",
    }
    launched = server.graphql(LAUNCH, {"params": params})["launchPipelineExecution"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launch failed: {launched}")
    return launched["run"]["runId"]


def wait_for_run(server: UIServer, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ENDED:
            return status
        time.sleep(1)
    raise TimeoutError(f"run {run_id} did not end in {timeout:.0f} s")


@dataclass
class RunTimings:
    """Seconds, from the run's event log."""

    queued_to_start: float  # run launched until its worker process started executing
    run: float  # run start to run end
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)  # step: (start-up, compute)
    computing: float = 0.0  # time at least one step was computing

    @property
    def idle_share(self) -> float:
        """Share of the run's time no step was computing: process start-ups, imports, scheduling."""
        return 1 - self.computing / self.run if self.run else 0.0


def run_timings(dagster_home: str, run_id: str) -> RunTimings:
    """Step start-up (worker launched → step start) and compute (step start → end) from the event log."""
    from dagster import DagsterEventType, DagsterInstance

    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = dagster_home
    try:
        with DagsterInstance.get() as instance:
            records = instance.all_logs(run_id)
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = old
    marks: dict[tuple[str, str], float] = {}
    run_marks: dict = {}
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        kind = event.event_type
        if kind in (DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START,
                    DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
            run_marks.setdefault(kind, record.timestamp)
        elif event.step_key and kind in (DagsterEventType.STEP_WORKER_STARTING, DagsterEventType.STEP_START,
                                         DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            marks[(event.step_key, "end" if kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE)
                   else kind.value)] = record.timestamp
    first = run_marks.get(DagsterEventType.RUN_ENQUEUED, run_marks.get(DagsterEventType.RUN_STARTING))
    start = run_marks[DagsterEventType.RUN_START]
    end = run_marks.get(DagsterEventType.RUN_SUCCESS, run_marks.get(DagsterEventType.RUN_FAILURE))
    timings = RunTimings(queued_to_start=start - first, run=end - start)
    intervals = []
    for step in sorted({key for key, _ in marks}):
        began, ended = marks.get((step, "STEP_START")), marks.get((step, "end"))
        if began is None or ended is None:
            continue
        launched = marks.get((step, "STEP_WORKER_STARTING"), began)
        timings.steps[step] = (began - launched, ended - began)
        intervals.append((began, ended))
    covered, reach = 0.0, float("-inf")
    for began, ended in sorted(intervals):
        if ended > reach:
            covered += ended - max(began, reach)
            reach = ended
    timings.computing = covered
    return timings


def _load() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


@click.command()
@click.option("--batch", default="sample", show_default=True, help="Folder of the images root to materialize.")
@click.option("--models", type=click.Choice(["tiny", "hub"]), default="tiny", show_default=True)
@click.option("--timeout", default=3600, show_default=True, help="Seconds to wait for the run to end.")
@click.option("--keep", is_flag=True, help="Keep the temporary DAGSTER_HOME and warehouse (path printed).")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Also write the figures as JSON here.")
def main(batch: str, models: str, timeout: int, keep: bool, output: Path | None) -> None:
    """Time one "Materialize all" of a batch started through the Dagster UI's GraphQL API.

    Example: python -m benchmarks.ui_run --batch sample
    """
    workdir = Path(tempfile.mkdtemp(prefix="pixelsift-ui-run-"))
    load_before = _load()
    try:
        began = time.monotonic()
        with ui_server(workdir, models=models) as server:
            ready = time.monotonic() - began
            launched = time.monotonic()
            run_id = materialize_all(server, batch)
            status = wait_for_run(server, run_id, timeout)
            wall = time.monotonic() - launched
            timings = run_timings(server.env["DAGSTER_HOME"], run_id)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    click.echo(f"{'step':<40} {'start-up s':>10} {'compute s':>10}")
    for step, (startup, compute) in timings.steps.items():
        click.echo(f"{step:<40} {startup:>10.1f} {compute:>10.1f}")
    startup_total = sum(s for s, _ in timings.steps.values())
    compute_total = sum(c for _, c in timings.steps.values())
    figures = {
        "batch": batch, "models": models, "status": status, "ui_ready_s": round(ready, 1), "wall_s": round(wall, 1),
        "launch_to_run_start_s": round(timings.queued_to_start, 1), "run_s": round(timings.run, 1),
        "steps": len(timings.steps), "step_startup_total_s": round(startup_total, 1),
        "step_compute_total_s": round(compute_total, 1), "some_step_computing_s": round(timings.computing, 1),
        "idle_share_of_run": round(timings.idle_share, 3), "load_before": load_before, "load_after": _load(),
        "cpus": os.cpu_count(),
    }
    click.echo(json.dumps(figures, indent=2))
    if keep:
        click.echo(f"kept {workdir}", err=True)
    if output:
        output.write_text(json.dumps(figures, indent=2) + "\n")
    if status != "SUCCESS":
        raise click.ClickException(f"run {run_id} ended {status}")


if __name__ == "__main__":
    main()
