"""The quality reports, served read-only by `pixelsift ui` at the `reports_url` setting.

The `eval_report` asset links to `<reports_url>/<batch>/report.html` (evals/report.py), so a report
opens in one click from its asset page, including one written by `pixelsift run` before the UI ran.
"""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


class ReportsURLError(ValueError):
    """reports_url is not an http://host:port address this machine can serve."""


def bind_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ReportsURLError(f"reports_url {url!r} must be http://<host>:<port>, e.g. http://127.0.0.1:3001 "
                              "(set PIXELSIFT_REPORTS_URL)")
    return parts.hostname, port


class _ReadOnlyReports(SimpleHTTPRequestHandler):
    """GET and HEAD only (the base class has no handler for any other method: 501), nothing outside
    the reports directory, never cached: a report written again shows its new content."""

    def translate_path(self, path: str) -> str:
        translated = Path(super().translate_path(path))
        root = Path(self.directory).resolve()
        resolved = translated.resolve()
        if resolved != root and root not in resolved.parents:
            return str(root / ".not-served")  # a link out of the directory: answered 404 (no such file)
        return str(translated)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # the webserver's log is the one a user reads


def serve_reports(directory: Path, url: str) -> ThreadingHTTPServer:
    """Serve ``directory`` at ``url`` from a background thread until ``.shutdown()``.

    Raises ReportsURLError for an address it cannot bind, OSError when the port is taken."""
    host, port = bind_address(url)
    directory.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((host, port), partial(_ReadOnlyReports, directory=str(directory.resolve())))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="pixelsift-reports", daemon=True).start()
    return server
