"""The Fitzpatrick17k downloader against a local HTTP server on 127.0.0.1 (never the internet).

The server serves generated JPEGs and the failure modes seen in the wild: 404/410, a truncated
JPEG, an HTML page served with 200, a URL failing with 500 before it works, and a slow URL.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bmglib.data import download as dl
from bmglib.data.schema import SchemaError

FAST = {"retries": 2, "backoff": 0.01, "timeout": 5, "concurrency": 4}
CSV_COLUMNS = [
    "md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
    "three_partition_label", "qc", "url", "url_alphanum",
]


def _jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _decodes(path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


class _Server:
    """Routes: path -> list of (status, body, content_type, delay_s); request n gets item min(n, -1)."""

    def __init__(self):
        self.routes: dict[str, list[tuple]] = {}
        self.hits: Counter = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.agents: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                with server._lock:
                    n = server.hits[self.path]
                    server.hits[self.path] += 1
                    server.times[self.path].append(time.monotonic())
                    server.agents.append(self.headers.get("User-Agent", ""))
                plan = server.routes.get(self.path, [(404, b"not found", "text/plain", 0)])
                status, body, ctype, delay = plan[min(n, len(plan) - 1)]
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A client that timed out leaves a broken pipe behind; that is expected, not a failure.
        self.httpd.handle_error = lambda request, client_address: None
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval so shutdown() at teardown returns in ~50 ms, not the default 0.5 s.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


def _write_csv(path, rows: list[tuple[str, str]], drop: tuple[str, ...] = ()):
    df = pd.DataFrame(
        [
            {"md5hash": md5, "fitzpatrick_scale": 3, "fitzpatrick_centaur": 3, "label": "psoriasis",
             "nine_partition_label": "inflammatory", "three_partition_label": "non-neoplastic",
             "qc": "", "url": url, "url_alphanum": url.replace(":", "").replace("/", "")}
            for md5, url in rows
        ],
        columns=CSV_COLUMNS,
    ).drop(columns=list(drop))
    df.to_csv(path, index=False)
    return path


GOOD = ["a" * 31 + str(i) for i in range(3)]
FLAKY, DEAD, GONE, TRUNC, HTML, NOURL = "f" * 32, "d" * 32, "e" * 32, "b" * 32, "c" * 32, "0" * 32


@pytest.fixture
def scenario(server, tmp_path):
    """A CSV with 3 good images, one 500-500-200 image, 404, 410, truncated, HTML and no url."""
    for i, md5 in enumerate(GOOD):
        server.routes[f"/img/{md5}.jpg"] = [(200, _jpeg(i), "image/jpeg", 0)]
    server.routes["/img/flaky.jpg"] = [(500, b"oops", "text/plain", 0)] * 2 + [
        (200, _jpeg(9), "image/jpeg", 0)
    ]
    server.routes["/img/gone.jpg"] = [(410, b"gone", "text/plain", 0)]
    jpeg = _jpeg(7)
    server.routes["/img/trunc.jpg"] = [(200, jpeg[: len(jpeg) // 2], "image/jpeg", 0)]
    server.routes["/img/html.jpg"] = [(200, b"<html><body>Forbidden</body></html>", "text/html", 0)]
    rows = [(md5, server.url(f"/img/{md5}.jpg")) for md5 in GOOD] + [
        (FLAKY, server.url("/img/flaky.jpg")),
        (DEAD, server.url("/img/missing.jpg")),  # unrouted -> 404
        (GONE, server.url("/img/gone.jpg")),
        (TRUNC, server.url("/img/trunc.jpg")),
        (HTML, server.url("/img/html.jpg")),
        (NOURL, ""),
    ]
    return _write_csv(tmp_path / "fitzpatrick17k.csv", rows)


def _report_csv(report) -> pd.DataFrame:
    return pd.read_csv(report.report_path, dtype=str, keep_default_na=False).set_index("md5hash")


def test_first_run_statuses_files_and_report(server, scenario, tmp_path):
    out = tmp_path / "out"
    rep = dl.download_fitzpatrick17k(scenario, out, **FAST)

    assert (rep.ok, rep.skipped_existing, rep.dead, rep.corrupt, rep.no_url) == (4, 0, 2, 2, 1)
    table = _report_csv(rep)
    assert list(table.columns) == ["url", "status", "http_status", "attempts", "error"]
    expected = {**{m: "ok" for m in GOOD}, FLAKY: "ok", DEAD: "dead", GONE: "dead",
                TRUNC: "corrupt", HTML: "corrupt", NOURL: "no_url"}
    assert table["status"].to_dict() == expected
    assert table.loc[DEAD, "http_status"] == "404" and table.loc[GONE, "http_status"] == "410"
    assert table.loc[FLAKY, "attempts"] == "3"
    assert table.loc[TRUNC, "error"] and table.loc[HTML, "error"]

    images = out / "images"
    for md5 in [*GOOD, FLAKY]:
        assert _decodes(images / f"{md5}.jpg")
    for md5 in (DEAD, GONE, TRUNC, HTML, NOURL):
        assert not (images / f"{md5}.jpg").exists()
    assert not list(out.rglob("*.part"))
    assert sorted(p.name for p in images.iterdir()) == sorted(f"{m}.jpg" for m in [*GOOD, FLAKY])

    # 404/410 are final at once; corrupt bodies are retried `retries` times; 500s until success.
    assert server.hits["/img/missing.jpg"] == 1 and server.hits["/img/gone.jpg"] == 1
    assert server.hits["/img/trunc.jpg"] == 3 and server.hits["/img/html.jpg"] == 3
    assert server.hits["/img/flaky.jpg"] == 3
    assert all("bmg" in agent for agent in server.agents)


def test_retries_back_off_exponentially(server, tmp_path):
    server.routes["/x.jpg"] = [(503, b"busy", "text/plain", 0)] * 2 + [(200, _jpeg(1), "image/jpeg", 0)]
    csv = _write_csv(tmp_path / "f.csv", [(GOOD[0], server.url("/x.jpg"))])
    rep = dl.download_fitzpatrick17k(csv, tmp_path / "out", retries=2, backoff=0.05, concurrency=1)
    assert rep.ok == 1
    t = server.times["/x.jpg"]
    assert t[1] - t[0] >= 0.05 and t[2] - t[1] >= 0.10


def test_persistent_5xx_gives_up_after_retries(server, tmp_path):
    server.routes["/down.jpg"] = [(500, b"oops", "text/plain", 0)]
    csv = _write_csv(tmp_path / "f.csv", [(GOOD[0], server.url("/down.jpg"))])
    rep = dl.download_fitzpatrick17k(csv, tmp_path / "out", **FAST)
    assert (rep.ok, rep.dead) == (0, 1)
    assert server.hits["/down.jpg"] == 3
    assert _report_csv(rep).loc[GOOD[0], "http_status"] == "500"


def test_second_run_downloads_nothing_new(server, scenario, tmp_path):
    out = tmp_path / "out"
    first = dl.download_fitzpatrick17k(scenario, out, **FAST)
    good_paths = [f"/img/{m}.jpg" for m in GOOD] + ["/img/flaky.jpg"]
    before = {p: server.hits[p] for p in good_paths}
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}

    second = dl.download_fitzpatrick17k(scenario, out, **FAST)

    assert {p: server.hits[p] for p in good_paths} == before
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes
    assert second.ok == 0 and second.skipped_existing == first.ok == 4
    assert (second.dead, second.corrupt, second.no_url) == (2, 2, 1)
    assert (_report_csv(second)["status"] == "skipped_existing").sum() == 4


def test_damaged_file_on_disk_is_downloaded_again(server, tmp_path):
    for i, md5 in enumerate(GOOD):
        server.routes[f"/{md5}.jpg"] = [(200, _jpeg(i), "image/jpeg", 0)]
    csv = _write_csv(tmp_path / "f.csv", [(m, server.url(f"/{m}.jpg")) for m in GOOD])
    images = tmp_path / "out" / "images"
    images.mkdir(parents=True)
    good = _jpeg(0)
    (images / f"{GOOD[0]}.jpg").write_bytes(good[: len(good) // 2])  # truncated by a crash
    (images / f"{GOOD[1]}.jpg").write_bytes(b"<html>error</html>")  # an error page saved as .jpg
    (images / f"{GOOD[2]}.jpg.part").write_bytes(b"half")  # leftover of an interrupted run

    rep = dl.download_fitzpatrick17k(csv, tmp_path / "out", **FAST)

    assert (rep.ok, rep.skipped_existing) == (3, 0)
    assert all(server.hits[f"/{m}.jpg"] == 1 for m in GOOD)
    assert all(_decodes(images / f"{m}.jpg") for m in GOOD)
    assert not list(images.glob("*.part"))


def test_missing_url_column_names_column_and_file(tmp_path):
    csv = _write_csv(tmp_path / "no_url.csv", [(GOOD[0], "http://127.0.0.1:9/x.jpg")], drop=("url",))
    with pytest.raises(SchemaError) as err:
        dl.download_fitzpatrick17k(csv, tmp_path / "out", **FAST)
    assert "'url'" in str(err.value) and str(csv) in str(err.value)


def test_missing_md5hash_column_is_an_error(tmp_path):
    csv = _write_csv(tmp_path / "no_md5.csv", [(GOOD[0], "")], drop=("md5hash",))
    with pytest.raises(SchemaError, match="md5hash"):
        dl.download_fitzpatrick17k(csv, tmp_path / "out", **FAST)


def test_unsafe_md5hash_is_refused(tmp_path):
    csv = _write_csv(tmp_path / "bad.csv", [("../escape", "http://127.0.0.1:9/x.jpg")])
    with pytest.raises(SchemaError, match="row"):
        dl.download_fitzpatrick17k(csv, tmp_path / "out", **FAST)
    assert not (tmp_path / "out" / "escape.jpg").exists()


def test_csv_given_as_url_is_fetched_once(server, scenario, tmp_path):
    server.routes["/meta/fitzpatrick17k.csv"] = [(200, scenario.read_bytes(), "text/csv", 0)]
    out = tmp_path / "out"
    rep = dl.download_fitzpatrick17k(server.url("/meta/fitzpatrick17k.csv"), out, **FAST)
    assert (rep.ok, rep.dead, rep.corrupt, rep.no_url) == (4, 2, 2, 1)
    assert (out / "fitzpatrick17k.csv").read_bytes() == scenario.read_bytes()
    dl.download_fitzpatrick17k(server.url("/meta/fitzpatrick17k.csv"), out, **FAST)
    assert server.hits["/meta/fitzpatrick17k.csv"] == 1


def test_csv_url_that_fails_is_a_clear_error(server, tmp_path):
    with pytest.raises(RuntimeError, match="metadata CSV"):
        dl.download_fitzpatrick17k(server.url("/nothing.csv"), tmp_path / "out", **FAST)
    assert not (tmp_path / "out" / "fitzpatrick17k.csv").exists()


def test_timeout_is_retried_and_refused_connection_is_dead(server, tmp_path):
    server.routes["/slow.jpg"] = [(200, _jpeg(1), "image/jpeg", 1.0), (200, _jpeg(1), "image/jpeg", 0)]
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    csv = _write_csv(tmp_path / "f.csv", [(GOOD[0], server.url("/slow.jpg")),
                                          (GOOD[1], f"http://127.0.0.1:{closed_port}/x.jpg")])
    rep = dl.download_fitzpatrick17k(csv, tmp_path / "out", **{**FAST, "timeout": 0.3})
    table = _report_csv(rep)
    assert table.loc[GOOD[0], "status"] == "ok" and table.loc[GOOD[0], "attempts"] == "2"
    assert table.loc[GOOD[1], "status"] == "dead" and table.loc[GOOD[1], "attempts"] == "3"
    assert table.loc[GOOD[1], "http_status"] == "" and "Connection" in table.loc[GOOD[1], "error"]


def test_limit_keeps_first_rows(server, scenario, tmp_path):
    rep = dl.download_fitzpatrick17k(scenario, tmp_path / "out", limit=2, **FAST)
    assert rep.total == rep.ok == 2
    assert list(_report_csv(rep).index) == GOOD[:2]
    assert server.hits[f"/img/{GOOD[2]}.jpg"] == 0


def test_cli_main(server, scenario, tmp_path, capsys):
    out = tmp_path / "cli"
    code = dl.main(["--out", str(out), "--csv", str(scenario), "--concurrency", "2",
                    "--retries", "2", "--backoff", "0.01"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "ok=4" in printed and "dead=2" in printed and "corrupt=2" in printed
    assert str(out / "download_report.csv") in printed
    assert len(list((out / "images").glob("*.jpg"))) == 4

    bad = _write_csv(tmp_path / "bad.csv", [(GOOD[0], "")], drop=("url",))
    assert dl.main(["--out", str(out), "--csv", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "url" in err and str(bad) in err


@pytest.mark.parametrize("data, problem", [(b"", "empty"), (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "NUL bytes")])
def test_empty_or_binary_csv_names_the_file(tmp_path, data, problem):
    csv = tmp_path / "f17k.csv"
    csv.write_bytes(data)
    with pytest.raises(SchemaError, match=problem) as err:
        dl.download_fitzpatrick17k(csv, tmp_path / "out", **FAST)
    assert str(err.value).startswith(f"{csv}: ")
