"""``pixelsift browse``: a small local web page over the warehouse (stdlib ``http.server``).

Search by text or by a similar image with the metadata filters, clusters of a batch, near-duplicate
groups, and every image's metadata. It only reads: the warehouse through the sandboxed DuckDB views
and search macros (``resources.search``), and image files through the pipeline's own safe reading
(``assets.image_files.open_image``).

Safety, since file names and model output are arbitrary text and the page is a web page:
- every string from files or models is HTML-escaped (``_e``), URLs are built with ``urlencode``,
  and colours are only used in CSS when they are ``#RRGGBB``; a Content-Security-Policy forbids
  scripts altogether, so a string that escaped the escaping still could not run;
- an image is served only when the warehouse's ``images`` table lists it (batch and path) and its
  bytes still have the sha256 recorded there, read like the pipeline reads: inside the images
  root, a regular file, under the size and pixel limits. A path such as ``../../etc/passwd`` is
  in no table and gets a 404;
- it listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import html
import io
import os
import re
import threading
import time
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from PIL import Image

from assets.image_files import ImageDecodeError, open_image
from resources.model_names import portable_model_name
from resources.search import FILTERS, Filters, SearchError, open_search_index, search_text, similar_to_image
from resources.settings import PixelsiftSettings
from resources.warehouse import connect

THUMB_SIDE = 192
LARGE_SIDE = 640
THUMB_CACHE = 512  # thumbnails kept in memory
REFRESH_S = 5.0  # how often the page checks whether the warehouse changed
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"
_STYLE = """
body{font-family:system-ui,sans-serif;margin:0 1.5rem 2rem;color:#222}
nav{display:flex;gap:1.2rem;padding:.8rem 0;border-bottom:1px solid #ddd;margin-bottom:1rem}
nav a{text-decoration:none;color:#135;font-weight:600}
form{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-bottom:1rem}
label{display:flex;flex-direction:column;font-size:.8rem;color:#555}
input{padding:.35rem;font-size:.95rem}
input[name=q]{width:24rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:.8rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.4rem;font-size:.8rem;overflow-wrap:anywhere}
.card img{width:100%;height:160px;object-fit:contain;background:#f4f4f4}
.best{border:2px solid #2a7}
.score{font-weight:700}
table{border-collapse:collapse;font-size:.85rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}
.swatch{display:inline-block;width:1.2rem;height:1.2rem;border:1px solid #999;vertical-align:middle}
.note{color:#666;font-size:.85rem}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _url(route: str, **params) -> str:
    given = {k: v for k, v in params.items() if v not in (None, "")}
    return _e(f"{route}?{urlencode(given)}" if given else route)


class NotFound(Exception):
    pass


class Browser:
    """What the page shows, as HTML strings; the HTTP handler only routes to it."""

    def __init__(self, settings: PixelsiftSettings, text_embedder: Callable[[], object] | None = None,
                 refresh_s: float = REFRESH_S) -> None:
        self.settings = settings
        self._text_embedder = text_embedder  # called on the first text search: loading CLIP takes seconds
        self._embedder = None
        self._refresh_s = refresh_s
        self.db_lock = threading.RLock()  # held while the shared connection is used: DuckDB's is not thread-safe
        self._lock = threading.Lock()  # the thumbnail cache
        self._con, self._con_has_text, self._signature, self._checked = None, False, None, 0.0
        self._thumbs: OrderedDict[tuple, bytes] = OrderedDict()
        self._listing: tuple[object, dict] = (None, {})
        self._indexes: dict[str, object] = {}  # model -> its vector index, until the warehouse changes

    def _connect(self, with_text: bool = False):
        """The page's sandboxed connection, with the warehouse's tables in memory (a search decodes no
        Parquet). Read again when a warehouse file changed (checked every ``refresh_s`` seconds), so
        batches written while the page runs show up. Callers hold ``db_lock``."""
        if with_text and self._embedder is None and self._text_embedder is not None:
            self._embedder = self._text_embedder()
        if time.monotonic() - self._checked > self._refresh_s:
            self._checked = time.monotonic()
            signature = _signature(Path(self.settings.warehouse_dir))
            if signature != self._signature:
                self._con, self._signature, self._indexes = None, signature, {}
        if self._con is None or (self._embedder is not None and not self._con_has_text):
            self._con = connect(self.settings.warehouse_dir, [], text_embedder=self._embedder, resident=True)
            self._con_has_text = self._embedder is not None
        return self._con, self._embedder

    # --- pages ---------------------------------------------------------------------------------

    def search_page(self, params: dict[str, str]) -> str:
        q, similar = params.get("q", "").strip(), params.get("similar", "").strip()
        filters = Filters(**{name: params.get(name) or None for name in FILTERS})
        k = int(params["k"]) if params.get("k", "").isdigit() and 0 < int(params["k"]) <= 500 else 40
        form = self._search_form(q, similar, filters, k, _choices(self._connect()[0]))
        if not q and not similar:
            return _page("Search", form + '<p class="note">Type what you are looking for, e.g. '
                         '“dog on a beach at sunset”. Filters narrow the images before the best k are taken.</p>')
        try:
            if similar:
                con, _ = self._connect()
                hits = similar_to_image(con, similar, k, filters, index=self._index_of_image(con, similar))
                heading = "Images like " + _image_link(self._describe(con, similar))
            else:
                con, embedder = self._connect(with_text=True)
                if embedder is None:
                    raise SearchError("text search needs the CLIP model: this page was started without one")
                hits = search_text(con, q, embedder.model_id, k, filters, index=self._index(embedder.model_id))
                heading = f"Best matches for “{_e(q)}”"
        except SearchError as exc:
            return _page("Search", form + f'<p class="note">{_e(exc)}</p>')
        cards = "".join(_card(h.batch, h.path, f'<span class="score">{h.score:.3f}</span> {_e(h.category or "")}'
                                               f"<br>{_e(h.caption or '')}") for h in hits)
        return _page("Search", f"{form}<h2>{heading}</h2>"
                     + (f'<div class="grid">{cards}</div>' if hits else '<p class="note">No images match.</p>'))

    def _index(self, model_id: str):
        """The model's vector index (resources.vector_index), opened once per warehouse state: it is
        brought up to date on opening, and the page reopens it when a warehouse file changes."""
        model = portable_model_name(model_id)
        if model not in self._indexes:
            self._indexes[model] = open_search_index(self.settings.warehouse_dir, model,
                                                     self.settings.search_index_above)
        return self._indexes[model]

    def _index_of_image(self, con, image_id: str):
        found = con.execute("SELECT model_id FROM clip_embeddings WHERE image_id = ? AND status = 'ok' "
                            "ORDER BY batch, path LIMIT 1", [image_id]).fetchall() \
            if "clip_embeddings" in _tables(con) else []
        return self._index(found[0][0]) if found else None

    def _search_form(self, q: str, similar: str, filters: Filters, k: int, choices: dict[str, list[str]]) -> str:
        def box(name: str, label: str, value: object, kind: str = "text") -> str:
            options = "".join(f'<option value="{_e(v)}">' for v in choices.get(name, []))
            listed = f' list="{name}-choices"><datalist id="{name}-choices">{options}</datalist' if options else ""
            return f'<label>{label}<input type="{kind}" name="{name}" value="{_e(value or "")}"{listed}></label>'

        hidden = f'<input type="hidden" name="similar" value="{_e(similar)}">' if similar and not q else ""
        return ("<form method=get action=/>" + box("q", "Search", q) + box("batch_key", "Batch", filters.batch_key)
                + box("category", "Category", filters.category) + box("tag", "Tag", filters.tag)
                + box("scene", "Scene", filters.scene) + box("taken_after", "Taken after", filters.taken_after)
                + box("taken_before", "Taken before", filters.taken_before) + box("k", "Results", k, "number")
                + hidden + '<button type="submit">Search</button></form>')

    def _describe(self, con, image_id: str) -> tuple[str, str]:
        rows = con.execute("SELECT batch, path FROM clip_embeddings WHERE image_id = ? ORDER BY batch, path LIMIT 1",
                           [image_id]).fetchall()
        if not rows:
            raise SearchError(f"no embedded image with sha256 {image_id} in the warehouse")
        return rows[0]

    def image_page(self, batch: str, path: str) -> str:
        con, _ = self._connect()
        tables = _tables(con)
        sections, image_id = [], None
        for table in ["images", "captions", "image_metadata", "color_palettes", "clusters", "near_duplicates"]:
            if table not in tables:
                continue
            rel = con.execute(f'SELECT * EXCLUDE (batch, path) FROM "{table}" WHERE batch = ? AND path = ?',
                              [batch, path])
            names, rows = [d[0] for d in rel.description], rel.fetchall()
            if table == "images" and not rows:
                raise NotFound(path)
            for row in rows:
                record = dict(zip(names, row))
                image_id = image_id or record.get("image_id")
                sections.append(f"<h3>{_e(table)}</h3>" + _record_table(table, batch, record))
        links = (f'<p><a href="{_url("/", similar=image_id)}">Similar images</a></p>' if image_id else "")
        big = f'<img alt="{_e(path)}" src="{_url("/thumb", batch=batch, path=path, size=LARGE_SIDE)}">'
        return _page(f"{batch}/{path}", f"<h2>{_e(batch)} / {_e(path)}</h2>{big}{links}{''.join(sections)}")

    def clusters_page(self, batch: str | None) -> str:
        con, _ = self._connect()
        if "clusters" not in _tables(con):
            return _page("Clusters", '<p class="note">No clusters yet: run the pipeline first.</p>')
        names = {}
        if "cluster_labels" in _tables(con):
            names = {(b, c): n for b, c, n in con.sql("SELECT batch, cluster_id, cluster_name FROM cluster_labels")
                     .fetchall()}
        args = [batch] if batch else []
        rows = con.execute("SELECT batch, cluster_id, path FROM clusters WHERE status = 'ok' "
                           f"{'AND batch = ?' if batch else ''} "
                           "ORDER BY batch, cluster_id = -1, cluster_id, NOT is_representative, path", args).fetchall()
        groups: dict[tuple, list[str]] = {}
        for b, cluster, path in rows:
            groups.setdefault((b, cluster), []).append(path)
        body = ""
        for (b, cluster), paths in groups.items():
            title = "noise (outliers)" if cluster == -1 else names.get((b, cluster)) or f"cluster {cluster}"
            cards = "".join(_card(b, p, "") for p in paths[:12])
            more = f'<p class="note">and {len(paths) - 12} more</p>' if len(paths) > 12 else ""
            body += f"<h3>{_e(b)}: {_e(title)} <span class=note>({len(paths)} images)</span></h3>" \
                    f'<div class="grid">{cards}</div>{more}'
        return _page("Clusters", body or '<p class="note">No clusters.</p>')

    def duplicates_page(self) -> str:
        con, _ = self._connect()
        if "near_duplicates" not in _tables(con):
            return _page("Duplicates", '<p class="note">No near-duplicate groups yet: run the pipeline first.</p>')
        rows = con.sql("SELECT group_id, batch, path, match, width, height, hash_distance, cosine "
                       "FROM near_duplicates ORDER BY group_id, NOT is_best, batch, path").fetchall()
        groups: dict[int, list[tuple]] = {}
        for row in rows:
            groups.setdefault(row[0], []).append(row)
        body = ""
        for group_id, members in groups.items():
            cards = "".join(
                _card(b, p, f"{_e(match)} · {w}×{h} · {bits} bits · cos {cos:.3f}", best=match == "best")
                for _, b, p, match, w, h, bits, cos in members)
            body += f"<h3>Group {group_id} <span class=note>({len(members)} copies; keep the green one)</span></h3>" \
                    f'<div class="grid">{cards}</div>'
        return _page("Duplicates", body or '<p class="note">No copies found.</p>')

    # --- images ----------------------------------------------------------------------------------

    def _listed(self, batch: str, path: str) -> str | None:
        """The sha256 the warehouse recorded for a decodable image, or None when it lists no such image.
        One query serves a page's thumbnails, until the warehouse changes."""
        with self.db_lock:
            con, _ = self._connect()
            if self._listing[0] is not con:
                rows = con.sql("SELECT batch, path, image_id FROM images WHERE status = 'ok'").fetchall() \
                    if "images" in _tables(con) else []
                self._listing = (con, {(b, p): i for b, p, i in rows})
            return self._listing[1].get((batch, path))

    def thumbnail(self, batch: str, path: str, side: int) -> bytes:
        """A JPEG of an image the warehouse lists, read and checked as the pipeline reads it."""
        image_id = self._listed(batch, path)
        if image_id is None:
            raise NotFound(path)
        key = (image_id, side)  # by content: a changed file is a new key, copies share one
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        try:
            image = open_image(Path(self.settings.images_root) / batch, path, self.settings.max_image_pixels,
                               sha256=image_id, max_bytes=self.settings.max_file_bytes)
        except ImageDecodeError as exc:
            raise NotFound(str(exc)) from None
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        with self._lock:
            self._thumbs[key] = out.getvalue()
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return out.getvalue()


def _signature(root: Path) -> tuple:
    """Changes when a Parquet file of the warehouse is written, replaced or removed."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.endswith(".parquet"):
                info = os.stat(os.path.join(folder, name))
                found.append((folder, name, info.st_mtime_ns, info.st_size))
    return tuple(found)


def _choices(con) -> dict[str, list[str]]:
    """The values each filter can take, offered as the user types (the most common first)."""
    tables = _tables(con)
    sources = {"batch_key": ("clip_embeddings", "batch"), "category": ("image_metadata", "primary_category"),
               "scene": ("image_metadata", "scene_type"), "tag": ("image_metadata", "unnest(tags)")}
    found = {}
    for name, (table, column) in sources.items():
        if table in tables:
            try:
                found[name] = [v for (v,) in con.sql(
                    f"SELECT value FROM (SELECT {column} AS value FROM {table}) WHERE value IS NOT NULL "
                    "GROUP BY value ORDER BY count(*) DESC, value LIMIT 200").fetchall()]
            except Exception:  # an older table without the column: no suggestions, the box still works
                found[name] = []
    return found


def _tables(con) -> set[str]:
    return {name for (name,) in con.sql("show tables").fetchall()}


def _image_link(batch_path: tuple[str, str]) -> str:
    batch, path = batch_path
    return f'<a href="{_url("/image", batch=batch, path=path)}">{_e(batch)}/{_e(path)}</a>'


def _card(batch: str, path: str, text: str, best: bool = False) -> str:
    """A thumbnail linking to the image's metadata; ``text`` is already escaped HTML."""
    link = _url("/image", batch=batch, path=path)
    return (f'<div class="card{" best" if best else ""}"><a href="{link}"><img loading="lazy" alt="{_e(path)}" '
            f'src="{_url("/thumb", batch=batch, path=path, size=THUMB_SIDE)}"></a>'
            f'<div><a href="{link}">{_e(batch)}/{_e(path)}</a></div><div>{text}</div></div>')


def _cell(name: str, value: object) -> str:
    if name in {"colors", "color_palette"} and isinstance(value, list):
        return " ".join((f'<span class="swatch" style="background:{c}"></span> ' if _COLOUR.fullmatch(str(c)) else "")
                        + _e(c) for c in value)
    if isinstance(value, list):
        return _e(", ".join(str(v) for v in value))
    return _e(value)


def _record_table(table: str, batch: str, record: dict) -> str:
    rows = []
    for name, value in record.items():
        cell = _cell(name, value)
        if table == "clusters" and name == "cluster_id":
            cell = f'<a href="{_url("/clusters", batch=batch)}">{cell}</a>'
        if table == "near_duplicates" and name == "group_id":
            cell = f'<a href="/duplicates">{cell}</a>'
        rows.append(f"<tr><th>{_e(name)}</th><td>{cell}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)} · pixelsift</title>'
            f"<style>{_STYLE}</style></head><body><nav><a href=/>Search</a><a href=/clusters>Clusters</a>"
            f"<a href=/duplicates>Duplicates</a></nav>{body}</body></html>")


PAGES = {
    "/": lambda browser, params: browser.search_page(params),
    "/image": lambda browser, params: browser.image_page(params.get("batch", ""), params.get("path", "")),
    "/clusters": lambda browser, params: browser.clusters_page(params.get("batch") or None),
    "/duplicates": lambda browser, params: browser.duplicates_page(),
}


def make_handler(browser: Browser) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pixelsift-browse"

        def log_message(self, format: str, *args) -> None:  # quiet: a page load is many thumbnails
            pass

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", _CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            params = {k: v[0] for k, v in parse_qs(url.query).items()}
            try:
                if url.path in PAGES:
                    with browser.db_lock:
                        page = PAGES[url.path](browser, params)
                elif url.path == "/thumb":
                    side = int(params["size"]) if params.get("size", "").isdigit() else THUMB_SIDE
                    body = browser.thumbnail(params.get("batch", ""), params.get("path", ""),
                                             min(max(side, 16), LARGE_SIDE))
                    self._send(HTTPStatus.OK, body, "image/jpeg")
                    return
                else:
                    raise NotFound(url.path)
            except NotFound:
                self._send(HTTPStatus.NOT_FOUND, _page("Not found", "<p>Not found.</p>").encode(),
                           "text/html; charset=utf-8")
                return
            except Exception as exc:  # one bad request must not stop the page; say what went wrong
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                           _page("Error", f"<p>{_e(type(exc).__name__)}: {_e(exc)}</p>").encode(),
                           "text/html; charset=utf-8")
                return
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")

    return Handler


def make_server(browser: Browser, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(browser))
    server.daemon_threads = True
    return server

