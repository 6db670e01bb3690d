"""The quality reports as `pixelsift ui` serves them: real HTTP on 127.0.0.1, read-only, nothing else."""

import socket
import urllib.error
import urllib.request

import pytest

from benchmarks.ports import free_port
from dagster_project.report_server import ReportsURLError, serve_reports


def free_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def served(tmp_path):
    reports = tmp_path / "reports"
    (reports / "sample").mkdir(parents=True)
    (reports / "sample" / "report.html").write_text("<h1>sample</h1>")
    (tmp_path / "secret.txt").write_text("not a report")
    (reports / "sample" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    url = free_url()
    server = serve_reports(reports, url)
    yield url, reports
    server.shutdown()
    server.server_close()


def status(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_a_report_is_served_and_a_new_one_seen_at_once(served):
    url, reports = served
    assert status(f"{url}/sample/report.html") == (200, "<h1>sample</h1>")
    (reports / "later").mkdir()  # written by a run after the UI started
    (reports / "later" / "report.html").write_text("<h1>later</h1>")
    assert status(f"{url}/later/report.html") == (200, "<h1>later</h1>")
    with urllib.request.urlopen(f"{url}/sample/report.html", timeout=10) as response:
        assert response.headers["Cache-Control"] == "no-store"  # a report written again is not shown stale


def test_nothing_outside_the_reports_folder_and_nothing_written(served):
    url, _ = served
    assert status(f"{url}/sample/leak.txt")[0] == 404  # a link leading out of the folder
    assert status(f"{url}/../secret.txt")[0] == 404
    assert status(f"{url}/sample/report.html", "PUT")[0] == 501
    assert status(f"{url}/sample/report.html", "POST")[0] == 501


def test_an_address_that_cannot_be_served_is_a_clear_error(tmp_path):
    for bad in ("https://127.0.0.1:3001", "http://127.0.0.1", "http://127.0.0.1:3001/reports", "127.0.0.1:3001"):
        with pytest.raises(ReportsURLError, match="must be http://<host>:<port>"):
            serve_reports(tmp_path, bad)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            serve_reports(tmp_path, f"http://127.0.0.1:{taken.getsockname()[1]}")


def test_pixelsift_ui_refuses_a_port_the_reports_use(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dagster_project.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIXELSIFT_REPORTS_URL", "http://127.0.0.1:3001")
    result = CliRunner().invoke(main, ["ui", "--port", "3001"])
    assert result.exit_code == 1
    assert "--port 3001 is where the reports are served" in result.output
