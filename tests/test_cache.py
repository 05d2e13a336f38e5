"""cached_model: the key holds every input and the code, config.json rebuilds the model, a damaged
cache folder is retrained with a warning."""

import functools
import importlib
import json
import sys

import pandas as pd
import pytest
import torch
from torch import nn

from bmglib import cache

BUILD = functools.partial(nn.Linear, 3, 2)
TABLE = pd.DataFrame({"n": [4, 2, 6], "exact": [0.5, 1.0, 2 / 3]},
                     index=pd.Index([1, 6, "overall"], name="requested_fst"))


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    return tmp_path


def _trainer(calls: list):
    def train():
        calls.append(1)
        torch.manual_seed(len(calls))
        return BUILD(), {"accuracy": 0.75, "per_fst": TABLE, "history": pd.DataFrame({"loss": [2.0, 1.0]})}
    return train


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_same_inputs_load_and_a_changed_input_retrains(root):
    calls = []
    first = cache.cached_model("toy", {"data": "abc", "seed": 0}, BUILD, _trainer(calls))
    assert not first.cached and calls == [1]
    again = cache.cached_model("toy", {"seed": 0, "data": "abc"}, BUILD, _trainer(calls))
    assert again.cached and calls == [1] and again.key == first.key and _same(first.model, again.model)
    assert not again.model.training
    assert again.report["accuracy"] == 0.75
    pd.testing.assert_frame_equal(again.report["per_fst"], TABLE)  # int labels and "overall" kept
    pd.testing.assert_frame_equal(again.report["history"], first.report["history"])
    for change in ({"data": "abd", "seed": 0}, {"data": "abc", "seed": 1}):
        other = cache.cached_model("toy", change, BUILD, _trainer(calls))
        assert not other.cached and other.key != first.key
    wider = cache.cached_model("toy", {"data": "abc", "seed": 0}, functools.partial(nn.Linear, 3, 3),
                               lambda: (nn.Linear(3, 3), {}))
    assert wider.key != first.key  # the constructor's arguments are inputs too
    assert calls == [1, 1, 1]


def test_config_json_holds_the_inputs_and_rebuilds_the_model(root):
    res = cache.cached_model("toy", {"data": "abc", "seed": 3}, BUILD, _trainer([]),
                             stamp={"n_images": 48})
    assert res.path == root / "cache" / f"toy_{res.key}"
    stored = json.loads((res.path / "config.json").read_text())
    assert stored["inputs"] == {"data": "abc", "seed": 3} and stored["key"] == res.key
    assert stored["build"] == {"callable": "torch.nn.modules.linear:Linear", "args": [3, 2], "kwargs": {}}
    assert _same(cache.load_model(res.path), res.model)
    prov = json.loads((res.path / "provenance.json").read_text())
    assert prov["seed"] == 3 and prov["n_images"] == 48 and prov["cache_key"] == res.key
    assert res.stamp["git_commit"] == prov["git_commit"]


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_damaged_weights_are_retrained_with_a_warning(root, damage):
    calls = []
    first = cache.cached_model("toy", {"data": "abc"}, BUILD, _trainer(calls))
    weights = first.path / "model.safetensors"
    if damage == "corrupt":
        weights.write_bytes(b"not a safetensors file")
    else:
        weights.unlink()
    with pytest.warns(UserWarning, match=f"toy_{first.key}.*retraining"):
        again = cache.cached_model("toy", {"data": "abc"}, BUILD, _trainer(calls))
    assert not again.cached and calls == [1, 1]
    assert cache.cached_model("toy", {"data": "abc"}, BUILD, _trainer(calls)).cached  # repaired


def test_use_cache_false_retrains_and_overwrites(root):
    calls = []
    first = cache.cached_model("toy", {"data": "abc"}, BUILD, _trainer(calls))
    fresh = cache.cached_model("toy", {"data": "abc"}, BUILD, _trainer(calls), use_cache=False)
    assert calls == [1, 1] and not fresh.cached and fresh.path == first.path
    assert _same(cache.load_model(fresh.path), fresh.model) and not _same(first.model, fresh.model)


def test_the_code_digest_follows_logic_not_docstrings_or_comments(tmp_path, monkeypatch):
    variants = {
        "mod_a": 'def f(x):\n    """Add one."""\n    return x + 1\n',
        "mod_b": 'def f(x):\n    """Add one to x (another docstring)."""\n    # a comment\n    return x + 1  # why\n',
        "mod_c": 'def f(x):\n    """Add one."""\n    return x + 2\n',
    }
    for name, src in variants.items():
        (tmp_path / f"{name}.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    digest = {name: cache.code_digest(importlib.import_module(name).f) for name in variants}
    for name in variants:
        sys.modules.pop(name, None)
    assert digest["mod_a"] == digest["mod_b"] != digest["mod_c"]
    assert cache.code_digest(nn.Linear) != cache.code_digest(nn.Conv2d)


def test_a_build_that_config_json_cannot_name_is_an_error(root):
    with pytest.raises(ValueError, match="importable"):
        cache.cached_model("toy", {}, lambda: nn.Linear(3, 2), _trainer([]))


# --- cached_result: the tables of slow pure functions -------------------------------------------

MODULE = '''
from bmglib import cache

CALLS = []


@cache.cached_result("{name}")
def table(df, scale=1.0, n_boot=10):
    """A slow bootstrap, here a sum."""
    CALLS.append(1)  # a comment
    return df.assign(y=df["x"] * scale + {offset})
'''


@pytest.fixture
def results(root, monkeypatch, tmp_path):
    """A module with a ``@cached_result`` function ``table``, written (and rewritten) by the test."""
    monkeypatch.setenv("BMG_RESULT_CACHE", "1")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(offset=0, comment=""):
        (tmp_path / "toy_results.py").write_text(comment + MODULE.format(name="toy_results", offset=offset))
        sys.modules.pop("toy_results", None)
        return importlib.import_module("toy_results")

    yield write
    sys.modules.pop("toy_results", None)


DF = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=pd.Index([1, 6, 2], name="fst"))


def test_a_cached_result_is_read_back_for_equal_arguments(results, root):
    mod = results()
    first = mod.table(DF, scale=2.0)
    again = mod.table(DF.copy(), 2.0)  # equal content, positional: the same key
    assert mod.CALLS == [1]
    pd.testing.assert_frame_equal(first, again)
    assert len(list((root / "cache" / "results").glob("table_*.pkl"))) == 1
    assert mod.table.__doc__.startswith("A slow bootstrap")  # functools.wraps


@pytest.mark.parametrize("change", ["value", "index", "dtype", "argument", "default"])
def test_a_changed_argument_recomputes(results, change):
    mod = results()
    mod.table(DF)
    other = {"value": lambda: mod.table(DF.assign(x=[1.0, 2.0, 4.0])),
             "index": lambda: mod.table(DF.set_axis([1, 6, 3])),
             "dtype": lambda: mod.table(DF.astype({"x": "float32"})),
             "argument": lambda: mod.table(DF, scale=3.0),
             "default": lambda: mod.table(DF, n_boot=11)}
    other[change]()
    assert mod.CALLS == [1, 1]


def test_a_changed_line_of_code_recomputes_and_a_comment_does_not(results):
    results().table(DF)
    mod = results(comment="# only a comment\n")
    mod.table(DF)
    assert mod.CALLS == []  # read back: the module's logic did not change
    mod = results(offset=1)
    assert (mod.table(DF)["y"] == DF["x"] + 1).all()
    assert mod.CALLS == [1]


def test_an_unreadable_result_is_recomputed_with_a_warning(results, root):
    mod = results()
    mod.table(DF)
    (pkl,) = (root / "cache" / "results").glob("table_*.pkl")
    pkl.write_bytes(b"not a pickle")
    with pytest.warns(UserWarning, match="unreadable"):
        pd.testing.assert_frame_equal(mod.table(DF), DF.assign(y=DF["x"]))
    assert mod.CALLS == [1, 1]


def test_an_argument_the_key_cannot_hold_is_an_error_and_the_switch_turns_it_off(results, monkeypatch):
    mod = results()
    with pytest.raises(TypeError, match=r"table\(scale=\.\.\.\): a object cannot be part"):
        mod.table(DF, scale=object())
    monkeypatch.setenv("BMG_RESULT_CACHE", "0")
    mod.table(DF)
    mod.table(DF)
    assert mod.CALLS == [1, 1]
