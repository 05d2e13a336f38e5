"""``bmglib.nbrun``: a `make paper` run is skipped only when nothing it depends on changed.

Most tests replace papermill's executor by a function that does what a notebook does (write the
executed copy and a data file that depends on a parameter); one runs a real kernel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import papermill
import pytest

from bmglib import nbrun, paths


@pytest.fixture
def env(tmp_path, monkeypatch):
    data, figures = tmp_path / "data", tmp_path / "figures"
    monkeypatch.setenv("BMG_DATA_ROOT", str(data))
    monkeypatch.setattr(paths, "FIGURES", figures)
    nb = tmp_path / "nb.ipynb"
    code = ("import os, pathlib\nroot = pathlib.Path(os.environ['BMG_DATA_ROOT'])\n"
            "root.mkdir(parents=True, exist_ok=True)\n(root / 'out.txt').write_text(repr(X))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]}),
                                               nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, nb)
    calls = []

    def fake_execute(input_path, output_path, parameters, cwd=None):
        calls.append(parameters)
        data.mkdir(parents=True, exist_ok=True)
        (data / "out.txt").write_text(repr(parameters["X"]))
        Path(output_path).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    out = tmp_path / "build" / "nb_out.ipynb"

    def make_paper(**params):  # one `make paper` of this single notebook: the marker is removed first
        (out.parent / nbrun.MARKER).unlink(missing_ok=True)
        return nbrun.run(nb, out, params or {"X": "1"})

    return {"nb": nb, "out": out, "data": data, "calls": calls, "make_paper": make_paper}


def test_an_unchanged_run_is_skipped_and_a_changed_parameter_executes(env):
    assert env["make_paper"]() is True
    assert env["calls"] == [{"X": 1}]  # "-p X 1" typed as papermill's CLI types it
    stamp = json.loads(nbrun.stamp_path(env["out"]).read_text())
    assert list(stamp["written"]) == [str(env["data"] / "out.txt")]
    assert env["make_paper"]() is False
    assert len(env["calls"]) == 1
    assert env["make_paper"](X="2") is True
    assert env["calls"][-1] == {"X": 2}


def test_a_changed_notebook_or_code_executes(env, monkeypatch):
    env["make_paper"]()
    env["nb"].write_text(env["nb"].read_text().replace("X = 1", "X = 3"))
    assert env["make_paper"]() is True
    monkeypatch.setattr(nbrun, "code_digest", lambda: "other code")
    assert env["make_paper"]() is True
    assert env["make_paper"]() is False


def test_a_file_it_wrote_gone_or_changed_executes_but_the_same_bytes_rewritten_do_not(env, capsys):
    env["make_paper"]()
    written = env["data"] / "out.txt"
    written.write_text("1")  # rewritten with the same bytes (new mtime)
    os.utime(written, ns=(1, 1))
    assert env["make_paper"]() is False
    written.write_text("5")
    assert env["make_paper"]() is True
    assert "a file it wrote changed since" in capsys.readouterr().out
    written.unlink()
    assert env["make_paper"]() is True
    assert "a file it wrote is gone" in capsys.readouterr().out


def test_a_file_a_later_run_rewrote_is_checked_against_that_runs_record(env, capsys):
    """01 and 07 both write the processed data: the file as 07 left it keeps 01 up to date, a
    change after both executes the first."""
    first, later = env["out"], env["out"].with_name("later.ipynb")
    (first.parent / nbrun.MARKER).unlink(missing_ok=True)
    assert nbrun.run(env["nb"], first, {"X": "1"}) is True  # out.txt "1"
    assert nbrun.run(env["nb"], later, {"X": "2"}) is True  # the later run rewrites out.txt "2"
    (first.parent / nbrun.MARKER).unlink()
    assert nbrun.run(env["nb"], first, {"X": "1"}) is False
    assert nbrun.run(env["nb"], later, {"X": "2"}) is False
    (env["data"] / "out.txt").write_text("3")
    assert nbrun.run(env["nb"], first, {"X": "1"}) is True
    assert "a file it wrote changed since" in capsys.readouterr().out


def test_after_an_earlier_run_executed_every_later_run_executes(env):
    env["make_paper"]()
    (env["out"].parent / nbrun.MARKER).touch()  # an earlier notebook of this `make paper` executed
    assert nbrun.run(env["nb"], env["out"], {"X": "1"}) is True
    assert nbrun.run(env["nb"], env["out"], {"X": "1"}, force=False) is True  # the marker stays for the run
    assert nbrun.run(env["nb"], env["out"], {"X": "1"}, force=True) is True


def test_a_missing_or_corrupt_stamp_or_copy_executes(env, capsys):
    env["make_paper"]()
    nbrun.stamp_path(env["out"]).write_text("{not json")
    assert env["make_paper"]() is True
    assert "unreadable stamp" in capsys.readouterr().out
    env["out"].unlink()
    assert env["make_paper"]() is True
    assert "no executed copy" in capsys.readouterr().out


def test_a_failing_run_leaves_no_stamp(env, monkeypatch):
    env["make_paper"]()

    def failing(*a, **k):
        raise RuntimeError("cell 2 raised")

    monkeypatch.setattr(papermill, "execute_notebook", failing)
    with pytest.raises(RuntimeError, match="cell 2"):
        env["make_paper"](X="4")
    assert not nbrun.stamp_path(env["out"]).exists()


def test_a_missing_notebook_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ipynb"):
        nbrun.run(tmp_path / "nope.ipynb", tmp_path / "out.ipynb", {})


def test_a_real_kernel_run_and_its_skip(tmp_path, monkeypatch, capsys):
    """The command line as `make paper` calls it, with a real kernel: executes, then skips."""
    data = tmp_path / "data"
    monkeypatch.setenv("BMG_DATA_ROOT", str(data))
    monkeypatch.setattr(paths, "FIGURES", tmp_path / "figures")
    nb = tmp_path / "nb.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import os, pathlib\nroot = pathlib.Path(os.environ['BMG_DATA_ROOT'])\n"
                                  "root.mkdir(parents=True, exist_ok=True)\n"
                                  "(root / 'out.txt').write_text(type(X).__name__ + repr(X))")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, nb)
    out = tmp_path / "build" / "nb_out.ipynb"
    nbrun.main([str(nb), str(out), "-p", "X", "7", "--cwd", str(tmp_path)])
    assert (data / "out.txt").read_text() == "int7"
    assert out.exists()
    (out.parent / nbrun.MARKER).unlink()
    capsys.readouterr()
    nbrun.main([str(nb), str(out), "-p", "X", "7", "--cwd", str(tmp_path)])
    assert "up to date, skipped" in capsys.readouterr().out
