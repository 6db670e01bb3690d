"""The ``pixelsift`` command: run the pipeline on a batch, open the UI, query and check the warehouse."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from dagster_project.long_lived import (
    freeze_long_lived,
    pause_collection,
    release_long_lived,
    skip_collection_at_exit,
)
from dagster_project.profiles import BACKENDS, PRESETS, ConfigError, resolve_choice
from resources.batch_keys import batch_key_param

EXAMPLE_QUERY = (
    "select m.path, m.primary_category, m.scene_type, m.tags, c.cluster_id "
    "from image_metadata m join clusters c using (batch, path) where m.batch = '{batch}' order by m.path"
)


def _use_profile(models: str | None, **tasks) -> None:
    """Settings travel as environment variables so the UI's code server sees the same ones."""
    if models:
        os.environ["PIXELSIFT_MODELS"] = models
    for variable, value in _task_variables(**tasks).items():
        os.environ[variable] = value
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("data/dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    from dagster_project.dagster_home import install_instance_settings

    install_instance_settings(home)


def _task_variables(config: str | None = None, captioner: str | None = None, metadata_llm: str | None = None,
                    clip: str | None = None, captioner_server: tuple[str, ...] = (),
                    metadata_llm_server: tuple[str, ...] = (), metadata_llm_backend: str | None = None) -> dict[str, str]:
    """The PIXELSIFT_* variables (dagster_project/profiles.py) that the model options stand for."""
    variables = {"PIXELSIFT_CONFIG": config and str(Path(config).resolve()), "PIXELSIFT_CAPTIONER_MODEL": captioner,
                 "PIXELSIFT_METADATA_LLM_MODEL": metadata_llm, "PIXELSIFT_CLIP_MODEL": clip,
                 "PIXELSIFT_CAPTIONER_BASE_URLS": ",".join(captioner_server),
                 "PIXELSIFT_METADATA_LLM_BASE_URLS": ",".join(metadata_llm_server),
                 "PIXELSIFT_METADATA_LLM_BACKEND": metadata_llm_backend}
    return {name: value for name, value in variables.items() if value}


def models_option(command):
    """The options that choose each task's model (they override pixelsift.toml and PIXELSIFT_* variables)."""
    options = [
        click.option("--models", type=click.Choice(PRESETS), default=None,
                     help="Preset for every task not named otherwise: hub (the real models, default) or tiny "
                     "(random weights, offline, meaningless outputs)."),
        click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Model configuration file (default: ./pixelsift.toml if present)."),
        click.option("--captioner", default=None, help="Captioning model: hub id, local directory, tiny, or "
                     "the served model's name with --captioner-server."),
        click.option("--metadata-llm", default=None, help="LLM for metadata and cluster labels: hub id, local "
                     "directory, tiny, or the served model's name with --metadata-llm-server."),
        click.option("--clip", default=None, help="CLIP model: open_clip name, local directory or tiny."),
        click.option("--captioner-server", multiple=True, help="Base URL of an OpenAI-compatible server for "
                     "captions (repeat for several)."),
        click.option("--metadata-llm-server", multiple=True, help="Base URL of an OpenAI-compatible server for "
                     "the LLM (repeat for several)."),
        click.option("--metadata-llm-backend", type=click.Choice(BACKENDS["metadata_llm"]), default=None,
                     help="Where the LLM runs: transformers (in-process, default), llama_cpp (a GGUF file on "
                     "llama.cpp's CPU kernels, in-process: fastest on CPUs without bf16 units) or openai "
                     "(implied by --metadata-llm-server)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _say_models() -> list[str]:
    """Print which model backs each task, warn about random weights; the tasks on random weights."""
    try:
        choice = resolve_choice()
    except ConfigError as exc:
        raise click.ClickException(f"model configuration: {exc}") from None
    for task_choice in choice.tasks.values():
        line = f"model {task_choice.describe()}"
        if task_choice.random_weights:
            click.secho(f"warning: {line}", fg="yellow", err=True)
        else:
            click.echo(line, err=True)
    return choice.random_weight_tasks()


@click.group()
def main() -> None:
    """pixelsift: captions, metadata, palettes, embeddings and clusters for folders of photos, locally.

    Each subfolder of the images root (default data/images) is a batch.
    """
    skip_collection_at_exit()  # seconds at every exit once torch is loaded (dagster_project/long_lived.py)


@main.command()
@click.option("--batch", "batches", multiple=True, callback=batch_key_param,
              help="Subfolder of the images root to process; repeat the option for several.  [default: sample]")
@click.option("--all", "all_batches", is_flag=True, help="Process every subfolder of the images root.")
@models_option
def run(batches: tuple[str, ...], all_batches: bool, models: str | None, **tasks) -> None:
    """Materialize every asset of one or more batches and say where the results are.

    Several batches run as a backfill does: one run over them all, in this process, so BLIP-2 and
    Phi-3.5-mini are each loaded once, not once per batch (PIXELSIFT_BATCHES_PER_RUN caps a run).

    Each task's model comes from these options, else PIXELSIFT_* variables, else pixelsift.toml
    (docs/configuration.md); --models tiny fills only the tasks not named.

    Example: pixelsift run --batch sample --models tiny --metadata-llm-server http://127.0.0.1:8080/v1
    """
    _use_profile(models, **tasks)
    random_tasks = _say_models()  # before the definitions load: a bad configuration is said plainly
    pause_collection()  # until the definitions are loaded, then frozen (dagster_project/long_lived.py)
    click.get_current_context().call_on_close(release_long_lived)  # when the command ends, or loading fails
    from dagster import DagsterInstance

    from assets.random_weights import RANDOM_WEIGHTS_TAG
    from dagster_project.run_history import process_tags
    from dagster_project.sensors import batch_folders
    from resources.settings import PixelsiftSettings

    settings = PixelsiftSettings()
    root = Path(settings.images_root)
    if all_batches and batches:
        raise click.UsageError("give --batch or --all, not both")
    instance = DagsterInstance.get()
    _prepare_instance(instance)
    keys = batch_folders(root, _WarningsToStderr()) if all_batches else list(batches or ("sample",))
    if not keys:
        raise click.ClickException(f"no batch folders with valid names in {root}")
    missing = [str(root / key) for key in keys if not (root / key).is_dir()]
    if missing:
        raise click.ClickException(f"no batch folder {', '.join(missing)}")
    tags = process_tags() | ({RANDOM_WEIGHTS_TAG: "true"} if random_tasks else {})
    try:
        from dagster_project.definitions import build_definitions

        defs = build_definitions(settings)
    except ConfigError as exc:
        raise click.ClickException(f"model configuration: {exc}") from None
    import dagster_project.step_preload  # noqa: F401 - the steps' libraries (torch...), while collection is paused
    freeze_long_lived()
    os.environ.setdefault("PIXELSIFT_STEPS_AT_ONCE", "1")  # in process: one step at a time, each may use every core
    from dagster_project.batch_runs import run_batches

    # Several batches run as a backfill would: one run over each range of them, each model loaded once.
    outcome = run_batches(defs, instance, keys, tags=tags, batches_per_run=settings.batches_per_run,
                          warn=lambda message: click.secho(message, fg="yellow", err=True))
    failed = [f"{key} ({why})" for key, why in outcome.failed]
    for key, run_id in outcome.done:
        try:  # one batch's summary failing must not hide the others' or the collection's refresh
            _say_where(settings, key, run_id)
        except Exception as exc:
            click.secho(f"error: batch {key!r}: {type(exc).__name__}: {exc}", fg="red", err=True)
            failed.append(f"{key} ({type(exc).__name__}: {exc})")
    collection_failed = _refresh_collection(defs, instance, settings) if len(failed) < len(keys) else None
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(keys)} batches failed: {', '.join(failed)}; "
                                   "see the log above or the Dagster UI")
    if collection_failed:
        raise click.ClickException(f"the collection assets failed: {collection_failed}; see the log above or the "
                                   "Dagster UI")
    click.echo("\nQuery them with SQL, for example:\n  pixelsift query \"" + EXAMPLE_QUERY.format(batch=keys[-1]) + '"')


def _refresh_collection(defs, instance, settings, run_config: dict | None = None) -> str | None:
    """The assets over every batch (near_duplicates, collection_clusters and their labels), once the
    batches are written; why not, if not."""
    from dagster_project.run_history import process_tags
    from resources.warehouse import collection_file

    try:
        result = defs.resolve_job_def("refresh_collection").execute_in_process(
            instance=instance, raise_on_error=False, tags=process_tags(), run_config=run_config)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if not result.success:
        return f"run {result.run_id}"
    groups = result.asset_materializations_for_node("near_duplicates")[0].metadata["groups"].value
    click.echo(f"\nCopies across all batches: {groups} group(s) in "
               f"{collection_file(settings.warehouse_dir, 'near_duplicates')}")
    made = {m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("collection_clusters")}
    clusters = {k: v.value for k, v in made["collection_clusters"].items() if k.startswith(("clusters", "images_"))}
    click.echo(f"Clusters across all batches: {clusters['clusters']} ({clusters['images_joined']} image(s) joined "
               f"one, {clusters['images_new']} in new ones, {clusters['images_noise']} noise) in "
               f"{collection_file(settings.warehouse_dir, 'collection_clusters')}")
    return None


@main.command()
@models_option
def recluster(models: str | None, **tasks) -> None:
    """Cluster the whole collection again from scratch, then label the clusters.

    After each run, collection_clusters is updated: earlier images keep their cluster id, new
    ones join a cluster or make new ones, so a saved cluster id keeps its meaning. Recluster when
    the clusters no longer fit (after changing distance_threshold, or after years of updates): a
    new cluster keeps an old id when the two share more than half of each other's images; the
    others get ids never used before. The LLM labels new and changed clusters.

    Example: pixelsift recluster --models tiny
    """
    _use_profile(models, **tasks)
    _say_models()
    from dagster import DagsterInstance

    from dagster_project.definitions import build_definitions
    from resources.settings import PixelsiftSettings

    settings = PixelsiftSettings()
    instance = DagsterInstance.get()
    _prepare_instance(instance)
    try:
        defs = build_definitions(settings)
    except ConfigError as exc:
        raise click.ClickException(f"model configuration: {exc}") from None
    failed = _refresh_collection(defs, instance, settings,
                                 {"ops": {"collection_clusters": {"config": {"recluster": True}}}})
    if failed:
        raise click.ClickException(f"the collection assets failed: {failed}; see the log above or the Dagster UI")


class _WarningsToStderr:
    """The ``log`` that ``batch_folders`` warns on, for the command line."""

    @staticmethod
    def warning(message: str) -> None:
        click.secho(f"warning: {message}", fg="yellow", err=True)


def _prepare_instance(instance) -> None:
    """Pool limits recorded before any run starts; runs left unfinished by a killed process show as
    failed from now on, with why, and the large-model slot they held is free again; say so."""
    from dagster_project.dagster_home import initialize_pools
    from dagster_project.run_history import fail_stale_runs, free_slots_of_ended_runs

    try:
        initialize_pools(instance)
        marked = fail_stale_runs(instance)
        freed = free_slots_of_ended_runs(instance)
    except Exception as exc:  # tidying the history must never stop the command itself
        click.secho(f"warning: could not check the run history for runs whose process died: {exc}",
                    fg="yellow", err=True)
        return
    for stale in marked:
        batch = f" of batch {stale.partition!r}" if stale.partition else ""
        click.secho(f"warning: marked run {stale.run_id} ({stale.job_name}{batch}) {stale.marked_as}: "
                    f"{stale.reason}", fg="yellow", err=True)
    for run_id in freed:
        click.secho(f"warning: freed the concurrency slot (large model) still held by run {run_id}, "
                    "which ended without freeing it", fg="yellow", err=True)


def _say_where(settings, key: str, run_id: str) -> None:
    from resources.warehouse import collection_file, connect

    click.echo(f"\nBatch {key!r} done (run {run_id}). Results, one Parquet file per asset:")
    con = connect(settings.warehouse_dir)
    for (name,) in con.sql("show tables").fetchall():
        if collection_file(settings.warehouse_dir, name).is_file():  # not one batch's: said after the batches
            continue
        rows = con.execute(f'select count(*) from "{name}" where batch = ?', [key]).fetchall()[0][0]
        click.echo(f"  {name:<18} {rows:>6} rows  {Path(settings.warehouse_dir) / name / f'batch={key}'}")
    from evals.report import report_path, report_url

    report = report_path(Path(settings.reports_dir), key)
    if report.exists():
        click.echo(f"Quality report: {report}\n  (or {report_url(settings.reports_url, key)} while pixelsift ui runs)")


@main.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--max-rows", default=100, show_default=True, help="Rows shown in table format.")
def query(sql: str, fmt: str, max_rows: int) -> None:
    """Run one read-only SQL query over the warehouse; each asset is a view with a batch column.

    The query sees only those views: it cannot read, write or list other files, load extensions
    or change settings. A damaged file is left out of its view and named on stderr. Search from SQL
    with search_images('text', k := 10, category := ...), similar_images('<sha256>') (docs/search.md).

    Example: pixelsift query "select primary_category, count(*) from image_metadata group by 1"
    """
    from dagster_project.search_cli import text_embedder_for
    from resources.settings import PixelsiftSettings
    from resources.warehouse import ReadOnlyQueryError
    from resources.warehouse import query as run_query

    skipped = []  # files left out of the views, named once the query is done
    try:
        rel = run_query(PixelsiftSettings().warehouse_dir, sql, skipped, text_embedder=text_embedder_for(sql))
        if fmt == "table":
            rel.show(max_rows=max_rows, max_width=shutil.get_terminal_size((160, 20)).columns)
        elif fmt == "csv":
            rel.df().to_csv(sys.stdout, index=False)
        else:
            click.echo(rel.df().to_json(orient="records", lines=True))
    except ReadOnlyQueryError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # duckdb's own errors (syntax, unknown table) are the user's to read
        raise click.ClickException(f"query failed: {exc}") from None
    finally:
        for problem in skipped:
            click.secho(f"warning: left out: {problem.path}: {problem.what}. Fix: {problem.fix}", fg="yellow", err=True)


@main.command()
def doctor() -> None:
    """Check the warehouse and the run history, and say what to do about each problem.

    Lists Parquet files that cannot be read (partitions and the chunks a stopped step saved),
    links that lead out of the warehouse, temporary files an interrupted write left behind, runs
    the history still shows as running although their process is gone, and ended runs still
    holding the large-model slot. Changes nothing.
    Exits with status 1 when it finds any.

    Example: pixelsift doctor
    """
    from dagster import DagsterInstance

    from dagster_project.run_history import ended_runs_holding_slots, stale_runs
    from resources.settings import PixelsiftSettings
    from resources.warehouse import warehouse_problems

    root = PixelsiftSettings().warehouse_dir
    problems = warehouse_problems(root)
    for problem in problems:
        click.echo(f"{problem.path}\n  problem: {problem.what}\n  fix: {problem.fix}")
    _use_profile(None)
    with DagsterInstance.get() as instance:
        stale = stale_runs(instance)
        holding = ended_runs_holding_slots(instance)
    for run in stale:
        click.echo(f"run {run.run_id} ({run.job_name}, batch {run.partition!r})\n  problem: still {run.status.value} "
                   f"in the run history, but {run.reason}\n  fix: the next pixelsift run or pixelsift ui marks it "
                   f"{run.marked_as}")
    for run in holding:
        batch = run.tags.get("dagster/partition")
        click.echo(f"run {run.run_id} ({run.job_name}, batch {batch!r})\n  problem: ended {run.status.value} but still "
                   "holds a large-model slot, so other runs' model steps wait for it\n  fix: the next pixelsift run "
                   "or pixelsift ui frees it at start (the UI's daemon a minute after the run ended), or free it "
                   "on the UI's Deployment > Concurrency page")
    if problems or stale or holding:
        raise click.ClickException(f"{len(problems)} problem(s) in {root}, {len(stale)} stale run(s) and "
                                   f"{len(holding)} ended run(s) holding a slot in the history")
    click.echo(f"No problems found in {root} or the run history.")


@main.group()
def batches() -> None:
    """The batch partitions Dagster knows, one per folder of the images root.

    Example: pixelsift batches prune --dry-run
    """


@batches.command()
@click.option("--dry-run", is_flag=True, help="List the partitions that would go; remove nothing.")
def prune(dry_run: bool) -> None:
    """Remove batch partitions whose folder is no longer in the images root.

    A partition added by hand for a folder that does not exist, or left by a folder that was
    deleted or renamed, stays in Dagster (and fails each run) until removed. Only the partition
    goes: its runs stay in the history and its results in the warehouse (`pixelsift query` still
    shows them). Removes nothing when the images root itself is missing.

    Example: pixelsift batches prune --dry-run
    """
    _use_profile(None)
    from dagster import DagsterInstance

    from dagster_project.batches import NoImagesRoot, partitions_without_folder, prune_partitions
    from resources.settings import PixelsiftSettings

    root = Path(PixelsiftSettings().images_root)
    try:
        with DagsterInstance.get() as instance:
            stale = (partitions_without_folder if dry_run else prune_partitions)(instance, root)
    except NoImagesRoot as exc:
        raise click.ClickException(str(exc)) from None
    if not stale:
        click.echo(f"Every batch partition has its folder in {root}; nothing to remove.")
        return
    verb = "would remove" if dry_run else "removed"
    for key in stale:
        click.echo(f"{verb} partition {key!r}: no folder {root / key}")


@main.command()
@models_option
@click.option("--port", default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def ui(models: str | None, port: int, host: str, **tasks) -> None:
    """Start the Dagster UI (and daemon, for the folder sensor) on pixelsift's definitions, and serve
    the quality reports read-only at the reports_url setting (default http://127.0.0.1:3001), where
    the `eval_report` asset's link points.

    The model options apply to every run the UI and the sensor start (the code server inherits them).

    Example: pixelsift ui --models tiny
    """
    _use_profile(models, **tasks)
    _say_models()
    import signal
    import subprocess

    from dagster import DagsterInstance

    from dagster_project.report_server import ReportsURLError, bind_address, serve_reports
    from resources.settings import PixelsiftSettings

    settings = PixelsiftSettings()
    with DagsterInstance.get() as instance:
        _prepare_instance(instance)
    try:
        if bind_address(settings.reports_url)[1] == port:
            raise ReportsURLError(f"--port {port} is where the reports are served ({settings.reports_url}): "
                                  "choose another --port or set PIXELSIFT_REPORTS_URL")
        reports = serve_reports(Path(settings.reports_dir), settings.reports_url)
    except ReportsURLError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot serve the reports at {settings.reports_url}: {exc}; is another "
                                   "pixelsift ui running? Set PIXELSIFT_REPORTS_URL to another port") from None
    click.echo(f"Quality reports: {settings.reports_url} (the folder {settings.reports_dir}, read-only)", err=True)
    dagster_dev = subprocess.Popen(ui_argv(host, port))
    # Ctrl-C reaches dagster dev as well (same process group) and it shuts down its daemon and code
    # server; a SIGTERM sent to this process alone is passed on so nothing is left running.
    signal.signal(signal.SIGTERM, lambda *_: dagster_dev.terminate())
    try:
        while True:
            try:
                returncode = dagster_dev.wait()
                break
            except KeyboardInterrupt:
                continue  # wait for dagster dev to finish shutting down
    finally:
        reports.shutdown()
    sys.exit(returncode)


WORKSPACE = Path(__file__).with_name("workspace.yaml")


def ui_argv(host: str, port: int) -> list[str]:
    """The `dagster dev` command line: the shipped workspace file names the code location `pixelsift`
    (`dagster dev -m` would name it after the module, and has no option to rename it)."""
    dagster = str(Path(sys.executable).with_name("dagster"))
    return [dagster, "dev", "-w", str(WORKSPACE), "-h", host, "-p", str(port)]


def _register_subcommands() -> None:
    from benchmarks.cli import bench
    from dagster_project.search_cli import browse, search, similar
    from evals.cli import baseline, eval_group

    for command in (baseline, eval_group, bench, search, similar, browse):
        main.add_command(command)


_register_subcommands()

if __name__ == "__main__":
    main()
