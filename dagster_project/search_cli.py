"""``pixelsift search``, ``pixelsift similar`` and ``pixelsift browse``: find photos in the warehouse.

The ranking and the filters are ``resources.search``'s (SQL macros); this module only reads the
command line, embeds the query and prints the hits.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path

import click

SHA256 = re.compile(r"[0-9a-f]{64}")
_TEXT_SEARCH_SQL = re.compile(r"\b(search_images|clip_text|clip_model_id)\s*\(", re.IGNORECASE)


def filter_options(command):
    """The metadata filters every search command takes; each narrows the candidates before the top k."""
    for option in reversed([
        click.option("--batch", "batch_key", default=None, help="Only this batch."),
        click.option("--category", default=None, help="Only this primary category (image_metadata)."),
        click.option("--tag", default=None, help="Only images with this tag."),
        click.option("--scene", default=None, help="Only this scene type (indoor, outdoor, ...)."),
        click.option("--taken-after", type=click.DateTime(), default=None, help="Taken at or after (EXIF time)."),
        click.option("--taken-before", type=click.DateTime(), default=None, help="Taken before (EXIF time)."),
        click.option("-k", "k", default=20, show_default=True, type=click.IntRange(1, 10_000),
                     help="How many results."),
    ]):
        command = option(command)
    return command


def _filters(batch_key, category, tag, scene, taken_after, taken_before):
    from resources.search import Filters

    return Filters(batch_key=batch_key, category=category, tag=tag, scene=scene, taken_after=taken_after,
                   taken_before=taken_before)


def clip_options(command):
    """Which CLIP model made the warehouse's vectors: chosen as ``pixelsift run`` chooses it (options,
    then PIXELSIFT_* variables, then pixelsift.toml, then the preset; dagster_project/profiles.py)."""
    for option in reversed([
        click.option("--models", type=click.Choice(["hub", "tiny"]), default=None,
                     help="Preset for the CLIP model when none is named (default: PIXELSIFT_MODELS, else hub)."),
        click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Model configuration file (default: ./pixelsift.toml if present)."),
        click.option("--clip", default=None, help="CLIP model: open_clip name, local directory or tiny."),
    ]):
        command = option(command)
    return command


def use_clip_options(models: str | None, config: str | None, clip: str | None) -> None:
    """The options as the variables profiles.py reads, so a page's later text searches see them too."""
    import os

    for variable, value in (("PIXELSIFT_MODELS", models), ("PIXELSIFT_CONFIG", config and str(Path(config).resolve())),
                            ("PIXELSIFT_CLIP_MODEL", clip)):
        if value:
            os.environ[variable] = value


def clip_embedder():
    """The configured CLIP model: the one that made the warehouse's image vectors."""
    from dagster_project.profiles import TINY_WARNING, ConfigError, resolve_choice, task_resource

    try:
        choice = resolve_choice().tasks["clip_embedder"]
        if choice.random_weights:
            click.secho(f"warning: CLIP has {TINY_WARNING}", fg="yellow", err=True)
        return task_resource(choice)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def text_embedder_for(sql: str):
    """The CLIP model when ``sql`` searches by text, else None (loading torch costs every other query seconds)."""
    return clip_embedder() if _TEXT_SEARCH_SQL.search(sql) else None


def printable(text: object) -> str:
    """File names and model output with control characters escaped: a name or a caption must not be
    able to move the cursor or recolour the terminal (ANSI escapes)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _print_hits(hits, images_root: Path) -> None:
    if not hits:
        click.echo("No images match.")
    for hit in hits:
        click.echo(f"{hit.score:6.3f}  {printable(images_root / hit.batch / hit.path)}  "
                   f"[{printable(hit.category or '-')}]  {printable(hit.caption or '')}")


def read_query_image(path: Path, max_pixels: int, max_bytes: int):
    """(sha256, image as the models see it) of a file given on the command line, read and decoded
    through the pipeline's own hostile-input checks (regular file, size and pixel limits)."""
    from assets.batch_files import FileRefused, read_batch_file
    from assets.image_files import ImageDecodeError, decode, to_rgb

    path = path.absolute()
    try:
        data = read_batch_file(path, path.parent, max_bytes)
        return hashlib.sha256(data).hexdigest(), to_rgb(decode(data, max_pixels).image)
    except (FileRefused, ImageDecodeError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read file: {exc.strerror or exc}") from None


@click.command()
@click.argument("text")
@filter_options
@clip_options
def search(text: str, models: str | None, config: str | None, clip: str | None, k: int, **filters) -> None:
    """Find photos by a text description, best match first: score, file, category, caption.

    Filters narrow the candidates before the k best are taken, so they never cut the list short
    while more images match.

    Example: pixelsift search "dog on a beach at sunset" --category animal -k 10
    """
    from resources.search import SearchError, open_search_index, search_text
    from resources.settings import PixelsiftSettings
    from resources.warehouse import connect

    use_clip_options(models, config, clip)
    settings = PixelsiftSettings()
    embedder = clip_embedder()
    try:
        con = connect(settings.warehouse_dir, text_embedder=embedder)
        index = open_search_index(settings.warehouse_dir, embedder.model_id, settings.search_index_above) \
            if _has_embeddings(con) else None
        hits = search_text(con, text, embedder.model_id, k, _filters(**filters), index=index)
    except SearchError as exc:
        raise click.ClickException(str(exc)) from None
    _print_hits(hits, Path(settings.images_root))


@click.command()
@click.argument("image")
@filter_options
@clip_options
def similar(image: str, models: str | None, config: str | None, clip: str | None, k: int, **filters) -> None:
    """Find photos that look like IMAGE: a file (embedded now unless the warehouse has it), a path
    relative to the images root (sample/chelsea.png) or a sha256.

    Copies of the image itself (same sha256) are left out.

    Example: pixelsift similar data/images/sample/chelsea.png -k 5
    """
    from resources.search import SearchError, open_search_index, similar_to_image, similar_to_vector
    from resources.settings import PixelsiftSettings
    from resources.warehouse import connect

    use_clip_options(models, config, clip)
    settings = PixelsiftSettings()
    con = connect(settings.warehouse_dir)
    file = next((f for f in (Path(image), Path(settings.images_root) / image) if f.exists()), None)
    try:
        if file is not None:
            sha, picture = read_query_image(file, settings.max_image_pixels, settings.max_file_bytes)
            known = con.execute("SELECT count(*) FROM clip_embeddings WHERE image_id = ? AND status = 'ok'",
                                [sha]).fetchall()[0][0] if _has_embeddings(con) else 0
            if known:
                hits = similar_to_image(con, sha, k, _filters(**filters), index=_index_of_image(con, settings, sha))
            else:
                embedder = clip_embedder()
                vector = embedder.embed([picture]).vectors[0]
                index = open_search_index(settings.warehouse_dir, embedder.model_id, settings.search_index_above) \
                    if _has_embeddings(con) else None
                hits = similar_to_vector(con, vector, embedder.model_id, k, _filters(**filters), index=index)
        elif SHA256.fullmatch(image.lower()):
            hits = similar_to_image(con, image.lower(), k, _filters(**filters),
                                    index=_index_of_image(con, settings, image.lower()))
        else:
            raise click.ClickException(f"{image}: no such file, and not a sha256 (64 hex digits)")
    except SearchError as exc:
        raise click.ClickException(str(exc)) from None
    _print_hits(hits, Path(settings.images_root))


def _index_of_image(con, settings, image_id: str):
    """The vector index of the model that made the image's stored vector (None: not in the warehouse)."""
    from resources.search import open_search_index

    if not _has_embeddings(con):
        return None
    found = con.execute("SELECT model_id FROM clip_embeddings WHERE image_id = ? AND status = 'ok' "
                        "ORDER BY batch, path LIMIT 1", [image_id]).fetchall()
    return open_search_index(settings.warehouse_dir, found[0][0], settings.search_index_above) if found else None


def _has_embeddings(con) -> bool:
    return "clip_embeddings" in {name for (name,) in con.sql("show tables").fetchall()}


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the page has no login, so keep it on this machine unless you mean otherwise.")
@click.option("--port", default=8765, show_default=True)
@clip_options
def browse(host: str, port: int, models: str | None, config: str | None, clip: str | None) -> None:
    """Open a local web page to search and browse the photos: text search with filters, similar
    images, clusters, near-duplicate groups, and each image's metadata. Reads only; Ctrl-C stops it.

    Example: pixelsift browse --port 8765   (then open http://127.0.0.1:8765/)
    """
    from dagster_project.browse import Browser, make_server
    from resources.settings import PixelsiftSettings

    use_clip_options(models, config, clip)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.secho(f"warning: listening on {host}: the page has no login, so anyone who can reach this "
                    "machine can see your photos and their metadata", fg="yellow", err=True)
    server = make_server(Browser(PixelsiftSettings(), text_embedder=clip_embedder), host, port)
    click.echo(f"pixelsift browse: http://{host}:{server.server_port}/  (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
