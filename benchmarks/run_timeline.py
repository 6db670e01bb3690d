"""Where the time of one ``pixelsift run`` goes, from process start to exit.

    python -m benchmarks.end_to_end --batch sample --breakdown [--llm MODEL]

The real command runs in a child process started as ``python -m benchmarks.run_timeline MARKS --
run ...``: that child only notes the clock around what the command does itself (interpreter start,
the CLI's import, the first import of torch, transformers, open_clip and the code location,
``build_definitions``, each model load and model identity, the command's return, the exit) and
the garbage collector's work, then calls ``pixelsift``'s own ``main``. Everything the runs did comes from their Dagster event log
(each step's start and end). Module-level imports are the standard library only: the child's
first mark must come before anything heavy is imported.
"""

from __future__ import annotations

import functools
import gc
import importlib.abc
import importlib.util
import json
import sys
import time
from pathlib import Path

# Modules whose first import is timed (start, end): the heavy ones and the code location.
WATCHED_IMPORTS = ("torch", "transformers", "open_clip", "sklearn", "dagster", "dagster_project.definitions")
# Functions timed on every call, by module: (module, attribute, label).
WATCHED_CALLS = (
    ("dagster_project.definitions", "build_definitions", "build_definitions"),
    ("resources.model_names", "model_identity", "model identity"),
)


class _Marks:
    """Clock readings (time.time(), comparable with the event log's timestamps) kept by the child,
    and the garbage collector's work: collections and seconds by generation."""

    def __init__(self) -> None:
        self.points: dict[str, float] = {}
        self.spans: list[tuple[str, float, float]] = []
        self.collections = {generation: [0, 0.0] for generation in (0, 1, 2)}
        self._collecting_since = 0.0

    def on_collection(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._collecting_since = time.perf_counter()
        else:
            figures = self.collections[info["generation"]]
            figures[0] += 1
            figures[1] += time.perf_counter() - self._collecting_since

    def span(self, label: str, start: float) -> None:
        self.spans.append((label, start, time.time()))


def _timed(function, label_of, marks: _Marks):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            marks.span(label_of(*args, **kwargs), start)
    return wrapper


def _time_model_loads(module, marks: _Marks) -> None:
    """``load_once``'s loader is timed, not the cache hit: the span is a real load."""
    original = module.load_once

    @functools.wraps(original)
    def load_once(key, loader, **kwargs):
        return original(key, _timed(loader, lambda: f"model load {key[0]} {Path(str(key[1])).name}", marks), **kwargs)
    module.load_once = load_once


class _ImportClock(importlib.abc.MetaPathFinder):
    """Times the first import of the watched modules, and wraps the watched functions as soon as
    their module has run (before any ``from module import name`` elsewhere binds the original)."""

    def __init__(self, marks: _Marks) -> None:
        self.marks = marks
        self.busy: set[str] = set()
        self.patch = {module for module, _, _ in WATCHED_CALLS} | {"resources.torch_runtime"}

    def find_spec(self, name, path=None, target=None):
        if name in self.busy or (name not in WATCHED_IMPORTS and name not in self.patch):
            return None
        self.busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy.discard(name)
        if spec is None or spec.loader is None:
            return spec
        execute, marks = spec.loader.exec_module, self.marks

        def exec_module(module):
            start = time.time()
            execute(module)
            if name in WATCHED_IMPORTS:
                marks.span(f"import {name}", start)
            self._patch(name, module)
        spec.loader.exec_module = exec_module
        return spec

    def _patch(self, name: str, module) -> None:
        for module_name, attribute, label in WATCHED_CALLS:
            if module_name == name:
                setattr(module, attribute, _timed(getattr(module, attribute), lambda *a, _l=label, **k: _l, self.marks))
        if name == "resources.torch_runtime":
            _time_model_loads(module, self.marks)


def child(marks_path: Path, argv: list[str], steer: bool = False) -> int:
    """Run ``pixelsift argv`` in this process, writing the marks to ``marks_path`` on the way out;
    ``steer``: random-weight LLMs write the workload's documents (benchmarks/steered_run.py)."""
    marks = _Marks()
    marks.points["interpreter started"] = time.time()
    sys.meta_path.insert(0, _ImportClock(marks))
    gc.callbacks.append(marks.on_collection)
    code = 0
    try:
        from dagster_project.cli import main

        marks.points["CLI imported"] = time.time()
        if steer:  # after the mark: its imports (torch among them) are timed as the command's own
            from benchmarks.steered_run import install

            install()
        main.main(args=argv, prog_name="pixelsift")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        marks.points["command returned"] = time.time()
        marks_path.write_text(json.dumps({"points": marks.points, "spans": marks.spans,
                                          "collections": marks.collections}))
    return code


def timed_command(argv: list[str], env: dict[str, str], scratch: Path, steer: bool = False) -> tuple[float, float, dict]:
    """Run ``pixelsift argv`` through the timing child: (spawn time, exit time, its marks)."""
    import subprocess

    marks_path = scratch / "timeline.json"
    start = time.time()
    subprocess.run([sys.executable, "-m", "benchmarks.run_timeline", str(marks_path), *(["--steer"] if steer else []),
                    "--", *argv], env=env, check=True, stdout=subprocess.DEVNULL)
    return start, time.time(), json.loads(marks_path.read_text())


def run_spans(dagster_home: Path) -> list[tuple[str, float, float]]:
    """Every run in the instance and each of its steps, as (label, start, end) from the event log."""
    from dagster import DagsterEventType, DagsterInstance

    ends = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_SKIPPED}
    spans = []
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for record in instance.get_runs():
            started, step_starts = None, {}
            for entry in instance.all_logs(record.run_id):
                event = entry.dagster_event
                if event is None:
                    continue
                if event.event_type == DagsterEventType.RUN_START:
                    started = entry.timestamp
                elif event.event_type in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE) and started:
                    spans.append((f"run {record.job_name}", started, entry.timestamp))
                elif event.event_type == DagsterEventType.STEP_START:
                    step_starts[event.step_key] = entry.timestamp
                elif event.event_type in ends and event.step_key in step_starts:
                    spans.append((f"step {event.step_key}", step_starts.pop(event.step_key), entry.timestamp))
    return spans


def timeline(spawned: float, exited: float, marks: dict, runs: list[tuple[str, float, float]]) -> list[tuple]:
    """The phases of the command, each (label, start, end), sorted, the whole command first."""
    points = marks["points"]
    run_starts = sorted(start for label, start, _ in runs if label.startswith("run "))
    run_ends = sorted(end for label, _, end in runs if label.startswith("run "))
    phases = [("pixelsift run, process start to exit", spawned, exited),
              ("interpreter start", spawned, points["interpreter started"]),
              ("CLI import", points["interpreter started"], points["CLI imported"]),
              ("before the first run: models chosen, instance, definitions",
               points["CLI imported"], run_starts[0] if run_starts else points["command returned"])]
    phases += [("between runs (results listed)", end, start) for end, start in zip(run_ends, run_starts[1:])]
    if run_ends:
        phases.append(("after the last run", run_ends[-1], points["command returned"]))
    phases.append(("exit: interpreter teardown", points["command returned"], exited))
    return sorted(phases + [tuple(span) for span in marks["spans"]] + runs, key=lambda p: (p[1], -p[2]))


def format_timeline(phases: list[tuple], spawned: float, collections: dict | None = None) -> str:
    """One line a phase: start (s after spawn), duration, label indented under what contains it;
    then the totals, and the garbage collector's work until the command returned."""
    lines, stack = [f"{'at s':>7} {'takes s':>8}  phase"], []
    for label, start, end in phases:
        while stack and start >= stack[-1]:
            stack.pop()
        lines.append(f"{start - spawned:7.2f} {end - start:8.2f}  {'  ' * len(stack)}{label}")
        stack.append(end)
    steps = sum(end - start for label, start, end in phases if label.startswith("step "))
    loads = sum(end - start for label, start, end in phases if label.startswith("model load"))
    wall = phases[0][2] - phases[0][1]
    lines.append(f"wall {wall:.2f} s; in steps {steps:.2f} s (model loads {loads:.2f} s); "
                 f"outside any step {wall - steps:.2f} s")
    if collections:
        lines.append("garbage collections until the command returned: " + ", ".join(
            f"generation {generation}: {count} in {seconds:.2f} s" for generation, (count, seconds) in collections.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse  # the standard library's, a few milliseconds before the first mark

    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    parser = argparse.ArgumentParser(usage="python -m benchmarks.run_timeline MARKS.json [--steer] -- run --batch KEY ...")
    parser.add_argument("marks", type=Path, help="where the child writes its clock readings")
    parser.add_argument("--steer", action="store_true", help="random-weight LLMs write the workload's documents")
    options = parser.parse_args(sys.argv[1:split])
    if split + 1 >= len(sys.argv):
        parser.error("the pixelsift arguments follow --")
    sys.exit(child(options.marks, sys.argv[split + 1:], options.steer))
