"""Re-running an unchanged batch: how long it takes, and proof that no model is called.

    python -m benchmarks.rerun [--batch sample]

Runs the real ``process_batch`` job twice on the tiny models in a scratch warehouse (the
first run fills it; the reuse path is the same whatever the models), then a third time with
every model resource replaced by one that raises if called. Prints the job's wall time and
each step's time for the re-run. Process start-up (imports) is not counted: it is the same
for any run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dagster import DagsterInstance

from dagster_project.definitions import build_definitions
from dagster_project.profiles import model_resources
from resources.settings import PixelsiftSettings


class NoModel:
    """Stands in for a model resource on the re-run: keeps its identity, refuses to compute."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        if name in {"caption", "embed", "generate_json"}:
            def refuse(*args, **kwargs):
                raise AssertionError(f"model called on an unchanged batch: {name}")
            return refuse
        return getattr(self.inner, name)


def run_once(defs, instance, batch: str) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    result = defs.resolve_job_def("process_batch").execute_in_process(partition_key=batch, instance=instance)
    wall = time.perf_counter() - start
    if not result.success:
        raise SystemExit("run failed")
    steps = {e.step_key: e.event_specific_data.duration_ms / 1000
             for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    return wall, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="sample")
    parser.add_argument("--images-root", default="data/images")
    args = parser.parse_args()

    models = model_resources("tiny")
    with tempfile.TemporaryDirectory() as scratch:
        settings = PixelsiftSettings(images_root=args.images_root, warehouse_dir=f"{scratch}/warehouse",
                                     reports_dir=f"{scratch}/reports")
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("batch", [args.batch])
        first_wall, _ = run_once(build_definitions(settings, models), instance, args.batch)
        guarded = {key: NoModel(resource) for key, resource in models.items()}
        wall, steps = run_once(build_definitions(settings, guarded), instance, args.batch)
    images = sum(1 for p in Path(args.images_root, args.batch).rglob("*") if p.is_file())
    pipeline = {k: v for k, v in steps.items() if not k.startswith(("gemini_baseline", "metadata_eval",
                                                                   "cluster_eval", "eval_"))}
    print(json.dumps({
        "batch": args.batch, "files": images, "first_run_wall_s": round(first_wall, 2),
        "rerun_wall_s": round(wall, 2), "rerun_pipeline_steps_s": round(sum(pipeline.values()), 2),
        "rerun_all_steps_s": round(sum(steps.values()), 2), "model_calls": 0,
        "steps_s": {k: round(v, 3) for k, v in sorted(steps.items())},
    }, indent=2))


if __name__ == "__main__":
    main()
