"""Download the Fitzpatrick17k images listed in its metadata CSV (for users who are online).

Each row's image is saved as ``<out_dir>/images/<md5hash>.jpg`` (the Fitzpatrick17k convention;
the bytes are stored as served, never re-encoded). The download is resumable and verified:

* an image already on disk that decodes with PIL is skipped, never fetched again;
* a new image is written to ``<md5hash>.jpg.part`` and renamed into place only after it decodes,
  so an interrupted run never leaves a half-written ``.jpg`` behind;
* a truncated file or a non-image (e.g. an HTML error page served with 200) is ``corrupt``: it is
  deleted and fetched again, up to ``retries`` more times;
* HTTP 404/410 (and other client errors except 408/429) are ``dead`` at once; 5xx, 408/429,
  connection errors and timeouts are retried with exponential backoff and become ``dead`` when
  the retries run out (``http_status``/``error`` in the report say which).

Every row ends in one status of ``STATUSES``; ``<out_dir>/download_report.csv`` lists them all.

Command line (what ``make data-fitzpatrick17k`` runs)::

    python -m bmglib.data.download --out DIR [--csv PATH_OR_URL] [--concurrency N] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import requests
from PIL import Image
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm

from bmglib.data.schema import SchemaError
from bmglib.data.sources import read_table
from bmglib.paths import raw_dir

FITZPATRICK17K_CSV_URL = "https://raw.githubusercontent.com/mattgroh/fitzpatrick17k/main/fitzpatrick17k.csv"
USER_AGENT = "bmg-bmglib/0.1 Fitzpatrick17k downloader (research; polite, resumable)"
STATUSES = ("ok", "skipped_existing", "dead", "corrupt", "no_url")
REPORT_COLUMNS = ("md5hash", "url", "status", "http_status", "attempts", "error")
# Permanent answers: asking again cannot help. 408/429 are the client errors worth retrying.
_RETRY_CLIENT_ERRORS = frozenset({408, 429})
_CHUNK = 1 << 16
# md5hash becomes a file name: refuse anything that could escape images/ or be empty.
_SAFE_NAME = re.compile(r"[0-9A-Za-z_-]+")


@dataclass
class DownloadReport:
    """Counts of one run, one per status in ``STATUSES``, and where the per-row report is."""

    ok: int = 0
    skipped_existing: int = 0
    dead: int = 0
    corrupt: int = 0
    no_url: int = 0
    report_path: Path | None = None
    images_dir: Path | None = None
    rows: list[dict] = field(default_factory=list, repr=False)

    @property
    def total(self) -> int:
        return self.ok + self.skipped_existing + self.dead + self.corrupt + self.no_url

    def summary(self) -> str:
        counts = ", ".join(f"{s}={getattr(self, s)}" for s in STATUSES)
        return f"Fitzpatrick17k images: {self.total} rows: {counts}\nreport: {self.report_path}"


@dataclass
class _Fetch:
    """Outcome of fetching one URL to one file."""

    status: str  # "ok" | "dead" | "corrupt"
    http_status: int | None = None
    attempts: int = 0
    error: str = ""


def _decode_error(path: Path) -> str:
    """'' when ``path`` is an image PIL fully decodes, else why not (truncated, not an image...)."""
    try:
        with Image.open(path) as im:
            im.load()  # verify() alone does not notice a JPEG cut short; decoding does
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... on bad input
        return f"{type(exc).__name__}: {exc}"
    return ""


def _csv_error(path: Path) -> str:
    return "" if path.stat().st_size > 0 else "empty file"


def _retry_delay(backoff: float, attempt: int, retry_after: str | None) -> float:
    """Exponential backoff with jitter (so workers do not retry in lockstep); honours Retry-After."""
    delay = backoff * 2**attempt * (1.0 + 0.1 * random.random())
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, min(float(retry_after), 60.0))  # cap: a hostile header must not hang us
    return delay


def _get_to_file(session: requests.Session, url: str, part: Path, timeout: float):
    """One GET streamed into ``part``; returns (http_status, retry_after) or raises requests errors."""
    with session.get(url, timeout=timeout, stream=True) as resp:
        if resp.status_code != 200:
            return resp.status_code, resp.headers.get("Retry-After")
        with open(part, "wb") as fh:
            for chunk in resp.iter_content(_CHUNK):
                fh.write(chunk)
        return 200, None


def fetch_file(
    session: requests.Session,
    url: str,
    dest: Path,
    check: Callable[[Path], str],
    *,
    retries: int,
    backoff: float,
    timeout: float,
) -> _Fetch:
    """Fetch ``url`` into ``dest`` via ``dest.part``, renamed only when ``check`` returns ''.

    At most ``1 + retries`` GETs. 404/410 and other non-retryable 4xx stop at once (``dead``);
    5xx, 408/429, connection errors and timeouts back off and retry (``dead`` when exhausted);
    a body that fails ``check`` is deleted and retried (``corrupt`` when exhausted).
    """
    part = dest.with_name(dest.name + ".part")
    result = _Fetch(status="dead")
    for attempt in range(retries + 1):
        result.attempts = attempt + 1
        retry_after = None
        try:
            code, retry_after = _get_to_file(session, url, part, timeout)
        except requests.RequestException as exc:
            code = None
            result.status, result.http_status = "dead", None
            result.error = f"{type(exc).__name__}: {exc}"[:300]
        if code == 200:
            result.http_status = 200
            err = check(part)
            if not err:
                os.replace(part, dest)  # atomic: dest is either absent or complete
                result.status, result.error = "ok", ""
                return result
            result.status, result.error = "corrupt", err[:300]
        elif code is not None:
            result.status, result.http_status, result.error = "dead", code, f"HTTP {code}"
            if 400 <= code < 500 and code not in _RETRY_CLIENT_ERRORS:
                break
        part.unlink(missing_ok=True)
        if attempt < retries:
            time.sleep(_retry_delay(backoff, attempt, retry_after))
    part.unlink(missing_ok=True)
    return result


def _download_row(session, md5hash: str, url: str, images: Path, opts: dict) -> dict:
    """Resolve one CSV row to its report row (runs in a worker thread)."""
    row = {"md5hash": md5hash, "url": url, "status": "", "http_status": "", "attempts": 0, "error": ""}
    if not url:
        row["status"] = "no_url"
        return row
    dest = images / f"{md5hash}.jpg"
    if dest.exists():
        if not _decode_error(dest):
            row["status"] = "skipped_existing"
            return row
        # A damaged file from an earlier run or another tool: never trust it, never leave it.
        dest.unlink()
    res = fetch_file(session, url, dest, _decode_error, **opts)
    row.update(status=res.status, http_status=res.http_status or "", attempts=res.attempts,
               error=res.error)
    return row


def make_session(concurrency: int = 4) -> requests.Session:
    """A ``requests`` Session naming bmg in its User-Agent, with one pooled connection per worker."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    adapter = HTTPAdapter(pool_connections=concurrency, pool_maxsize=concurrency)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def resolve_csv(csv_path_or_url: str | os.PathLike, out_dir: Path, session, opts: dict) -> Path:
    """The local metadata CSV: the path itself, or ``out_dir/fitzpatrick17k.csv`` fetched once."""
    src = str(csv_path_or_url)
    if not src.startswith(("http://", "https://")):
        return Path(src)
    local = out_dir / "fitzpatrick17k.csv"
    if local.exists() and local.stat().st_size > 0:
        return local  # resumable: the metadata is fetched once, then treated as immutable raw data
    res = fetch_file(session, src, local, _csv_error, **opts)
    if res.status != "ok":
        raise RuntimeError(
            f"could not download the metadata CSV {src} after {res.attempts} attempt(s): "
            f"{res.error or res.status}"
        )
    return local


def read_rows(csv_path: Path, where: str) -> pd.DataFrame:
    """The CSV's ``md5hash``/``url`` columns as stripped strings, checked (SchemaError on failure)."""
    df = read_table(csv_path, ("md5hash", "url"), where)
    df = df[["md5hash", "url"]].apply(lambda s: s.str.strip())
    bad = ~df["md5hash"].str.fullmatch(_SAFE_NAME)
    if bad.any():
        rows = ", ".join(str(i + 2) for i in df.index[bad][:10])  # spreadsheet row numbers
        raise SchemaError(f"{where}: md5hash empty or not a plain file name at CSV row(s) {rows}")
    dup = df["md5hash"].duplicated(keep=False)
    if dup.any():
        rows = ", ".join(str(i + 2) for i in df.index[dup][:10])
        raise SchemaError(f"{where}: duplicate md5hash at CSV row(s) {rows}")
    return df


def write_report(rows: list[dict], path: Path) -> None:
    """Write the per-row report CSV atomically (a crash never leaves half a report)."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def download_fitzpatrick17k(
    csv_path_or_url: str | os.PathLike = FITZPATRICK17K_CSV_URL,
    out_dir: str | os.PathLike | None = None,
    *,
    concurrency: int = 4,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 30,
    limit: int | None = None,
    session: requests.Session | None = None,
) -> DownloadReport:
    """Download every image of a Fitzpatrick17k-format CSV into ``out_dir/images/<md5hash>.jpg``.

    ``csv_path_or_url`` is a local CSV or an http(s) URL (saved once as ``out_dir/fitzpatrick17k.csv``).
    ``out_dir`` defaults to ``paths.raw_dir("fitzpatrick17k")``. ``limit`` keeps the first N rows.
    ``retries`` is the number of extra attempts per URL; the wait before retry k (0-based) is
    ``backoff * 2**k`` plus up to 10 % jitter. At most ``concurrency`` requests run at once.
    Writes ``out_dir/download_report.csv``, prints a summary and returns the counts.
    Raises :class:`SchemaError` if the CSV lacks ``md5hash``/``url`` or has unusable md5hash values.
    """
    out = Path(out_dir) if out_dir is not None else raw_dir("fitzpatrick17k")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    session = session or make_session(concurrency)
    opts = {"retries": retries, "backoff": backoff, "timeout": timeout}
    csv_path = resolve_csv(csv_path_or_url, out, session, opts)
    where = str(csv_path)
    if where != str(csv_path_or_url):
        where += f" (downloaded from {csv_path_or_url})"
    df = read_rows(csv_path, where)
    if limit is not None:
        df = df.head(limit)

    results: list[dict | None] = [None] * len(df)  # kept in CSV order, filled as rows finish
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = {
            pool.submit(_download_row, session, md5, url, images, opts): i
            for i, (md5, url) in enumerate(zip(df["md5hash"], df["url"], strict=True))
        }
        with tqdm(total=len(futures), desc="Fitzpatrick17k", unit="img") as bar:
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
    finally:
        # On Ctrl-C: drop the queued rows instead of downloading all of them before exiting.
        pool.shutdown(wait=True, cancel_futures=True)

    report = DownloadReport(report_path=out / "download_report.csv", images_dir=images)
    report.rows = [r for r in results if r is not None]
    for r in report.rows:
        setattr(report, r["status"], getattr(report, r["status"]) + 1)
    write_report(report.rows, report.report_path)
    print(report.summary())
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code (0 even when some links are dead)."""
    parser = argparse.ArgumentParser(
        prog="python -m bmglib.data.download", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=raw_dir("fitzpatrick17k"),
                        help="output directory (images/ and download_report.csv go here)")
    parser.add_argument("--csv", default=FITZPATRICK17K_CSV_URL,
                        help="metadata CSV, local path or http(s) URL (default: the official one)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel requests (default 4)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--retries", type=int, default=4, help="extra attempts per URL (default 4)")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry wait, seconds")
    parser.add_argument("--timeout", type=float, default=30, help="per-request timeout, seconds")
    args = parser.parse_args(argv)
    try:
        download_fitzpatrick17k(
            args.csv, args.out, concurrency=args.concurrency, retries=args.retries,
            backoff=args.backoff, timeout=args.timeout, limit=args.limit,
        )
    except (SchemaError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
