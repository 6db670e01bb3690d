"""Two runs claiming the large-model pool's one slot at the same moment on the default SQLite
instance: how often both get it, and whether the machine-wide lock still keeps them apart.

    python -m benchmarks.pool_claim_race [--trials 40] [--hold 0.2]

Each trial starts two processes on a fresh temporary DAGSTER_HOME holding the shipped dagster.yaml.
They wait at a barrier, claim a slot of ``pixelsift/large_model`` as Dagster's executors do
(``claim_concurrency_slot``), and a process that got one then holds the model: it takes the lock
of ``resources/large_model_lock.py`` and keeps it for ``--hold`` seconds. Printed: the trials in
which both processes got the one slot (Dagster's claim alone would let both load a model), and
those in which both held the lock at once (0 when the lock does its job). Rerun after a Dagster
upgrade: a first figure of 0 would mean Dagster's SQLite claim no longer races.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace


def _claimer(barrier, run_id: str, hold: float, out) -> None:
    from dagster import DagsterInstance

    from resources.concurrency import LARGE_MODEL_POOL
    from resources.large_model_lock import large_model_slot

    with DagsterInstance.get() as instance:
        barrier.wait()
        claimed = instance.event_log_storage.claim_concurrency_slot(LARGE_MODEL_POOL, run_id, "model").is_claimed
        held = None
        if claimed:  # a step's context as the lock reads it: the instance, and a log
            with large_model_slot(SimpleNamespace(instance=instance, log=logging.getLogger(run_id))):
                start = time.time()
                time.sleep(hold)
                held = (start, time.time())
        out.put((claimed, held))


def race(trials: int, hold: float) -> tuple[int, int]:
    from dagster import DagsterInstance

    from dagster_project.dagster_home import initialize_pools, install_instance_settings

    both_claimed = both_held = 0
    with tempfile.TemporaryDirectory() as home:
        install_instance_settings(Path(home))
        os.environ["DAGSTER_HOME"] = home
        with DagsterInstance.get() as instance:
            initialize_pools(instance)
            for trial in range(trials):
                barrier, out = mp.Barrier(2), mp.Queue()
                runs = [f"trial{trial}-{side}" for side in "ab"]
                children = [mp.Process(target=_claimer, args=(barrier, run, hold, out)) for run in runs]
                for child in children:
                    child.start()
                results = [out.get(timeout=120) for _ in children]
                for child in children:
                    child.join()
                both_claimed += all(claimed for claimed, _ in results)
                if all(held for _, held in results):
                    (_, first_end), (second_start, _) = sorted(held for _, held in results)
                    both_held += second_start < first_end
                for run in runs:
                    instance.event_log_storage.free_concurrency_slots_for_run(run)
    return both_claimed, both_held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--hold", type=float, default=0.2, help="seconds a process holds the model")
    args = parser.parse_args()
    both_claimed, both_held = race(args.trials, args.hold)
    print(f"{args.trials} trials: both runs got the pool's one slot in {both_claimed}; "
          f"both held the large-model lock at once in {both_held}")


if __name__ == "__main__":
    main()
