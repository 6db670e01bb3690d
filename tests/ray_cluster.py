"""A real Ray cluster on this machine for the tests: a head and one worker node, each a
``ray start --block`` process on 127.0.0.1 with ports of its own, stopped by the ids of its
processes (never ``ray stop``, which would stop every Ray cluster of this user on the machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.ports import free_port

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120


@dataclass
class RayCluster:
    job_server: str  # http://127.0.0.1:<dashboard port>: what dagster-ray submits steps to
    head_node_id: str
    worker_node_ids: list[str]
    logs: Path


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(processes: list[subprocess.Popen]) -> None:
    """Every process of the nodes, found as descendants of the ``ray start`` processes before any
    dies (Ray's workers start sessions of their own, and outlive a killed raylet for a while)."""
    tree = []
    for proc in processes:
        try:
            node = psutil.Process(proc.pid)
            tree += [node, *node.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for member in tree:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=15)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    for proc in processes:
        proc.wait(5)


def _alive_nodes(job_server: str) -> list[dict]:
    from ray.util.state import list_nodes

    return [n.__dict__ for n in list_nodes(address=job_server, filters=[("state", "=", "ALIVE")])]


def _wait_for_job_agent(job_server: str, deadline: float) -> None:
    """Nodes are alive before their job agents register; until then a submission is refused
    ("No available agent to submit job"). One trivial job that succeeds says the cluster takes jobs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client, last = JobSubmissionClient(job_server), None
    while time.monotonic() < deadline:
        try:
            job = client.submit_job(entrypoint="true")
            while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                time.sleep(0.5)
            if status == JobStatus.SUCCEEDED:
                return
            last = f"test job {status}: {client.get_job_logs(job)[-2000:]}"
        except RuntimeError as exc:
            last = exc
        time.sleep(1)
    raise RuntimeError(f"the local Ray cluster accepted no job in {START_TIMEOUT_S} s: {last}")


def start_cluster(worker_cpus: int = 2):
    """Yields a RayCluster whose head offers no CPUs, as a production head often does, so every
    step runs on the worker node, which has ``worker_cpus``; stops both after."""
    # Short path: Ray's unix sockets live under it and must stay under ~107 characters.
    temp = Path(tempfile.mkdtemp(prefix="psray", dir="/tmp"))
    # Steps start `dagster api execute_step`: the nodes find it on PATH, as on a real node's image.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
    env = {k: v for k, v in env.items() if not k.startswith(("PIXELSIFT_", "RAY_ADDRESS"))}  # steps get them from the run
    gcs, dashboard = free_port(), free_port()
    job_server = f"http://127.0.0.1:{dashboard}"
    processes = [_start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "0",
                         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                         "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
                         "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(temp)],
                        temp / "head.log", env)]
    try:
        processes.append(_start(["--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1",
                                 "--num-cpus", str(worker_cpus), "--dashboard-agent-listen-port", str(free_port())],
                                temp / "worker.log", env))
        deadline, nodes, last = time.monotonic() + START_TIMEOUT_S, [], None
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in processes):
                break
            try:
                nodes = _alive_nodes(job_server)
            except Exception as exc:  # the dashboard is not up yet
                last = exc
            if len(nodes) == 2:
                break
            time.sleep(1)
        if len(nodes) != 2:
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in temp.glob("*.log"))
            raise RuntimeError(f"the local Ray cluster did not come up with 2 nodes in {START_TIMEOUT_S} s "
                               f"(alive: {len(nodes)}; last error: {last})\n{logs}")
        _wait_for_job_agent(job_server, deadline)
        head = [n["node_id"] for n in nodes if n["is_head_node"]]
        yield RayCluster(job_server, head[0], [n["node_id"] for n in nodes if not n["is_head_node"]], temp)
    finally:
        _stop(processes[::-1])
        shutil.rmtree(temp, ignore_errors=True)
