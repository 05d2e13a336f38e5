"""One notebook run of ``make paper``, skipped when nothing it depends on changed.

    python -m bmglib.nbrun notebooks/04_fid_per_fst.ipynb build/quick/04_fid_per_fst.ipynb \\
        --cwd notebooks -p PROFILE quick -p DATASET synthetic

executes the notebook with papermill (the same arguments as ``papermill``'s ``-p`` and ``--cwd``)
and writes a stamp beside the executed copy (``<output>.stamp.json``): the run's **key** and the
**files it wrote** (under ``figures/`` and the data root, with size, modification time and SHA-256). A later
call is skipped, printing why, when all of these hold:

* the key is the same: the notebook's bytes, its parameters, every file of the ``bmglib`` package,
  ``pyproject.toml``, the data root and the ``BMG_*`` environment variables;
* the executed copy and every file the run wrote still exist, unchanged (size, and mtime or, for a
  file rewritten since, its bytes) since the last run of the folder that wrote them (a file two
  runs write is checked against the newer stamp's record);
* no run before it in the same ``make paper`` executed: a run that executes leaves the marker
  ``<output folder>/.executed``, which ``make paper`` removes when it starts, and every later run
  then executes too (a notebook reads what the earlier ones wrote).

Anything else executes the notebook (``--force`` or ``make paper FORCE=1`` always does); inside it,
the models, samples and tables are still read from their own caches (:mod:`bmglib.cache`), so an
executed run with nothing changed redraws the figures without retraining. A run that fails writes
no stamp, so it executes again next time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from bmglib import paths

STAMP_SUFFIX = ".stamp.json"
MARKER = ".executed"  # in the output folder: a run of this `make paper` executed


def _digest_files(files: Iterable[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def code_digest() -> str:
    """A digest of every file of the ``bmglib`` package (not its ``__pycache__``) and ``pyproject.toml``."""
    pkg = paths.REPO_ROOT / "bmglib"
    files = [f for f in pkg.rglob("*") if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"]
    pyproject = paths.REPO_ROOT / "pyproject.toml"
    return _digest_files(files + ([pyproject] if pyproject.exists() else []), paths.REPO_ROOT)


def run_key(notebook: Path, parameters: Mapping[str, str], env: Mapping[str, str] | None = None) -> str:
    """What an executed notebook depends on, as a hex digest (see the module docstring)."""
    env = os.environ if env is None else env
    parts = {
        "notebook": hashlib.sha256(Path(notebook).read_bytes()).hexdigest(),
        "parameters": {str(k): str(v) for k, v in sorted(parameters.items())},
        "code": code_digest(),
        "data_root": str(paths.data_root()),
        "env": {k: v for k, v in sorted(env.items()) if k.startswith("BMG_")},
        "python": sys.version.split()[0],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _roots() -> list[Path]:
    return [paths.FIGURES, paths.data_root()]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_written_since(t0_ns: int, roots: Iterable[Path] | None = None) -> dict[str, list]:
    """Every file under ``roots`` (default ``figures/`` and the data root) modified at or after
    ``t0_ns``: path → [size, mtime_ns, sha256]."""
    out = {}
    for root in roots if roots is not None else _roots():
        if not root.exists():
            continue
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                try:
                    st = os.stat(p)
                    if st.st_mtime_ns >= t0_ns:
                        out[p] = [st.st_size, st.st_mtime_ns, _sha256(p)]
                except OSError:  # removed meanwhile
                    continue
    return out


def _unchanged(path: str, size: int, mtime_ns: int, sha256: str) -> bool:
    """The file is as recorded: same size, and same mtime or (rewritten with the same bytes) same hash."""
    st = os.stat(path)
    return st.st_size == size and (st.st_mtime_ns == mtime_ns or _sha256(path) == sha256)


def stamp_path(output: Path) -> Path:
    return Path(str(output) + STAMP_SUFFIX)


def _latest_records(folder: Path) -> dict[str, list]:
    """path → the newest record (by mtime) of that file in any readable stamp of ``folder``: a
    file that a later run of the pipeline rewrote (07 preparing the data 01 prepared) is checked
    against that run's record, which that run's own check also verifies."""
    latest: dict[str, list] = {}
    for sp in folder.glob("*" + STAMP_SUFFIX):
        try:
            written = json.loads(sp.read_text())["written"]
            for p, record in written.items():
                if len(record) == 3 and (p not in latest or record[1] > latest[p][1]):
                    latest[p] = record
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # an unreadable stamp is reported by its own run's check
    return latest


def why_not_skip(output: Path, key: str) -> str | None:
    """None when the run can be skipped; otherwise why it cannot (one phrase)."""
    output = Path(output)
    if (output.parent / MARKER).exists():
        return "an earlier notebook of this run executed"
    if not output.exists():
        return f"no executed copy {output}"
    sp = stamp_path(output)
    if not sp.exists():
        return f"no stamp {sp.name}"
    try:
        stamp = json.loads(sp.read_text())
        old_key, written = stamp["key"], stamp["written"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable stamp {sp} ({type(e).__name__}: {e})"
    if old_key != key:
        return "its notebook, parameters, code or environment changed"
    latest = _latest_records(output.parent)
    for p, record in written.items():
        try:
            if not _unchanged(p, *latest.get(p, record)):
                return f"a file it wrote changed since: {p}"
        except OSError:
            return f"a file it wrote is gone: {p}"
        except TypeError:
            return f"unreadable stamp {sp} (the record of {p})"
    return None


def run(notebook: Path, output: Path, parameters: Mapping[str, str], cwd: str | None = None,
        force: bool = False) -> bool:
    """Execute ``notebook`` into ``output`` with papermill unless the stamp says it is up to date;
    True when it executed. String values are typed as papermill's ``-p`` types them ("1" → 1,
    "True" → True); the key is made of the values as given."""
    notebook, output = Path(notebook), Path(output)
    if not notebook.exists():
        raise FileNotFoundError(f"no notebook {notebook}")
    key = run_key(notebook, parameters)
    reason = "--force" if force else why_not_skip(output, key)
    if reason is None:
        stamp = json.loads(stamp_path(output).read_text())
        print(f"   up to date, skipped: {output} (key {key}, {len(stamp['written'])} files it wrote unchanged, "
              f"{stamp['seconds']:.0f} s when it ran; FORCE=1 executes it)", flush=True)
        return False
    print(f"   executing: {reason}", flush=True)
    import papermill  # only when executing: the check above needs none of the notebook stack
    from papermill.cli import _resolve_type  # "-p SEED 1" → 1, as papermill's own command line does

    typed = {k: _resolve_type(v) if isinstance(v, str) else v for k, v in parameters.items()}

    output.parent.mkdir(parents=True, exist_ok=True)
    (output.parent / MARKER).touch()
    stamp_path(output).unlink(missing_ok=True)
    t0_ns = time.time_ns() - 2_000_000_000  # 2 s of slack for filesystems with coarse mtimes
    start = time.monotonic()
    papermill.execute_notebook(str(notebook), str(output), parameters=typed, cwd=cwd)
    written = files_written_since(t0_ns)
    stamp = {"key": key, "notebook": str(notebook), "parameters": dict(parameters),
             "seconds": time.monotonic() - start, "written": written}
    tmp = stamp_path(output).with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=1))
    tmp.replace(stamp_path(output))
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a notebook parameter, as papermill's -p (the value is parsed by papermill's rules)")
    ap.add_argument("--cwd", default=None, help="the kernel's working directory")
    ap.add_argument("--force", action="store_true", help="execute even when up to date")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # papermill's progress lines, as its CLI
    run(args.notebook, args.output, dict(args.parameters), cwd=args.cwd, force=args.force)


if __name__ == "__main__":
    main()
