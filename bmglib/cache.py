"""Trained models cached under a key of all their inputs: ``cached_model(name, inputs, build, train)``;
and the tables of slow pure functions (bootstraps) under a key of their arguments: ``@cached_result(...)``.

    res = cached_model("fst_auditor", {"train": hash_table(df), "size": 32, "seed": 1000},
                       build=functools.partial(SmallCNN, 32, n_out=6), train=lambda: ...)
    res.model, res.report, res.path          # trained once; later calls with the same inputs load

The key is made of everything the weights depend on: ``inputs`` (config values, data hashes,
seed), the model's constructor and its arguments, and a digest of the *code* that trains it
(:func:`code_digest`: the syntax tree of the ``train`` function, the constructor and the listed
``code``, without docstrings or comments) — so a change of the training logic retrains, and a
hand-bumped version constant is not needed. Beside the weights (``model.safetensors``) lie
``config.json`` (the key's inputs and the constructor: :func:`load_model` rebuilds the model from
it alone, as diffusers' ``save_pretrained`` does), the report (``report.json`` and one CSV per
table) and ``provenance.json`` (git commit, versions, time). A cache folder is written to a
temporary name and renamed, so it exists only complete; one that cannot be read (weights missing
or corrupt, a config that does not match) is retrained, with a warning naming it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import json
import os
import shutil
import textwrap
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bmglib import config, paths

#: what reading a damaged cache folder raises (then it is retrained)
_UNREADABLE = (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError)


@dataclass
class CachedModel:
    model: nn.Module  # the trained model (a loaded one in eval mode)
    report: dict  # what ``train`` returned beside the model: JSON values and DataFrames
    key: str
    path: Path  # paths.cache_dir() / f"{name}_{key}"
    stamp: dict  # provenance.json
    cached: bool  # loaded rather than trained


def cached_model(name: str, inputs: Mapping[str, Any], build: Callable[[], nn.Module],
                 train: Callable[[], tuple[nn.Module, dict]], *, code: tuple = (),
                 stamp: Mapping[str, Any] | None = None, use_cache: bool = True) -> CachedModel:
    """The model ``train()`` makes, loaded from ``paths.cache_dir()/<name>_<key>`` when a
    previous call with the same key saved it.

    ``inputs``: JSON-serialisable, every input the weights depend on. ``build``: an importable
    class or function, or a ``functools.partial`` of one with JSON-serialisable arguments, that
    makes the untrained model (its state dict is what is saved). ``train()`` → ``(model, report)``,
    ``report`` a dict of JSON values and DataFrames (index and column labels that look like
    integers come back as ints). ``code``: further functions, classes or modules the weights or
    the report depend on (digested into the key with ``train`` and ``build``). ``stamp``: extra
    provenance fields, not part of the key. ``use_cache=False`` retrains and overwrites.
    """
    spec = describe(build)
    key = config.cache_key(name=name, inputs=dict(inputs), build=spec,
                           code=code_digest(_callable(build), train, *code))
    path = paths.cache_dir() / f"{name}_{key}"
    if use_cache and path.exists():
        try:
            return _read(path, key)
        except _UNREADABLE as e:
            warnings.warn(f"cached model {path} is unreadable ({type(e).__name__}: {e}); retraining",
                          stacklevel=2)
    model, report = train()
    fields = {"seed": inputs.get("seed"), **(stamp or {})}
    prov = config.provenance(None, **fields, name=name, cache_key=key, inputs=dict(inputs))
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps({"name": name, "key": key, "inputs": dict(inputs),
                                                 "build": spec}, indent=2))
    _write_report(tmp, report)
    config.write_provenance(tmp / "provenance.json", prov)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return CachedModel(model, report, key, path, prov, False)


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a cached model from its ``config.json`` and load its weights (eval mode)."""
    path = Path(path)
    spec = json.loads((path / "config.json").read_text())["build"]
    module, _, qualname = spec["callable"].partition(":")
    fn: Any = importlib.import_module(module)
    for part in qualname.split("."):
        fn = getattr(fn, part)
    model = fn(*spec["args"], **spec["kwargs"])
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model.eval()


def describe(build: Callable[[], nn.Module]) -> dict:
    """``{"callable": "module:qualname", "args": [...], "kwargs": {...}}`` of a constructor."""
    fn = _callable(build)
    args, kwargs = (build.args, build.keywords) if isinstance(build, functools.partial) else ((), {})
    ref = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in fn.__qualname__:
        raise ValueError(f"build must be an importable class or function (or a functools.partial "
                         f"of one) so that config.json can rebuild it; got {ref}")
    try:
        json.dumps([args, kwargs])
    except TypeError as e:
        raise ValueError(f"the arguments of build {ref} must be JSON-serialisable: {e}") from None
    return {"callable": ref, "args": list(args), "kwargs": dict(kwargs)}


def code_digest(*objs: Any) -> str:
    """A short sha256 of the logic of functions, classes or modules: their syntax trees without
    docstrings (comments and formatting never reach the tree), so a changed line of code changes
    it and a changed comment does not. A class counts by its name, bases and methods; an object
    without source (a builtin) by its name."""
    parts = []
    for obj in objs:
        obj = _callable(obj)
        if inspect.isclass(obj):  # its methods (inspect.getsource of a class parses its whole module)
            methods = [v for _, v in sorted(vars(obj).items()) if inspect.isfunction(v)]
            parts.append(f"class {obj.__qualname__}({', '.join(b.__qualname__ for b in obj.__bases__)}): "
                         + code_digest(*methods))
            continue
        try:
            source = textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError):
            parts.append(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj)}")
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:  # a lambda inside a larger expression: its lines as written
            parts.append(source)
            continue
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                    and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        parts.append(ast.dump(tree))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _callable(obj: Any) -> Any:
    return obj.func if isinstance(obj, functools.partial) else obj


def _read(path: Path, key: str) -> CachedModel:
    stored = json.loads((path / "config.json").read_text())
    if stored.get("key") != key:
        raise ValueError(f"its config.json holds key {stored.get('key')!r}, not {key!r}")
    model = load_model(path)
    stamp = json.loads((path / "provenance.json").read_text())
    return CachedModel(model, _read_report(path), key, path, stamp, True)


def _write_report(path: Path, report: Mapping[str, Any]) -> None:
    """``report.json`` (JSON values; which entries are tables) and ``<entry>.csv`` per table."""
    values, tables = {}, {}
    for k, v in report.items():
        if isinstance(v, pd.DataFrame):
            default_index = isinstance(v.index, pd.RangeIndex) and v.index.equals(pd.RangeIndex(len(v)))
            v.to_csv(path / f"{k}.csv", index=not default_index)
            tables[k] = {"index": v.index.name, "columns": v.columns.name, "has_index": not default_index}
        else:
            values[k] = v
    (path / "report.json").write_text(json.dumps({"order": list(report), "values": values,
                                                  "tables": tables}, indent=2, default=str))


def _read_report(path: Path) -> dict:
    meta = json.loads((path / "report.json").read_text())
    out = {}
    for k in meta["order"]:
        if k in meta["values"]:
            out[k] = meta["values"][k]
            continue
        t = meta["tables"][k]
        table = pd.read_csv(path / f"{k}.csv", index_col=0 if t["has_index"] else None)
        if t["has_index"]:
            table.index = pd.Index([_label(i) for i in table.index], name=t["index"])
        table.columns = pd.Index([_label(c) for c in table.columns], name=t["columns"])
        out[k] = table
    return out


def _label(v: Any) -> Any:
    """A CSV label back to an int where it looks like one (FST 1..6 beside "overall")."""
    return int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v


def cached_result(*code: Any) -> Callable:
    """Decorator for a slow pure function (a bootstrap) that returns tables: its result is pickled
    under ``paths.cache_dir()/results/<name>_<key>.pkl`` and read back by a later call with the same
    arguments, so a re-run of a notebook does not redo its bootstraps.

    The key holds every argument (after defaults) by content: DataFrames, Series and arrays by a
    hash of their values, index, columns and dtypes; numbers, strings and lists of them as they are
    (any other type is a ``TypeError``, so nothing enters the key unseen); and :func:`code_digest`
    of the function and of ``code`` (the modules, as import names, or functions its result depends
    on; digested at the first call, so a module may name itself). A pickle that
    cannot be read is recomputed, with a warning naming it. ``BMG_RESULT_CACHE=0`` turns the cache
    off (the unit tests do, so that a monkeypatched helper is really called)."""

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        digest: list[str] = []

        @functools.wraps(fn)
        def cached(*args: Any, **kwargs: Any) -> Any:
            if os.environ.get("BMG_RESULT_CACHE", "1") == "0":
                return fn(*args, **kwargs)
            if not digest:
                digest.append(code_digest(fn, *(importlib.import_module(c) if isinstance(c, str) else c
                                                 for c in code)))
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            args_key = {k: _fingerprint(v, f"{fn.__qualname__}({k}=...)") for k, v in bound.arguments.items()}
            key = config.cache_key(fn=f"{fn.__module__}.{fn.__qualname__}", code=digest[0], args=args_key)
            path = paths.cache_dir() / "results" / f"{fn.__name__}_{key}.pkl"
            if path.exists():
                try:
                    return pd.read_pickle(path)
                except Exception as e:  # noqa: BLE001 - any unreadable pickle is recomputed
                    warnings.warn(f"cached result {path} is unreadable ({type(e).__name__}: {e}); recomputing",
                                  stacklevel=2)
            out = fn(*args, **kwargs)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            pd.to_pickle(out, tmp)
            tmp.replace(path)
            return out

        return cached

    return wrap


def _fingerprint(v: Any, where: str) -> Any:
    """A JSON value standing for ``v`` in a cache key (tables and arrays by a hash of their content)."""
    if isinstance(v, (pd.DataFrame, pd.Series)):
        h = hashlib.sha256(pd.util.hash_pandas_object(v, index=True).to_numpy().tobytes())
        cols = list(map(str, v.columns)) if isinstance(v, pd.DataFrame) else [str(v.name)]
        dtypes = list(map(str, v.dtypes)) if isinstance(v, pd.DataFrame) else [str(v.dtype)]
        h.update(json.dumps([type(v).__name__, cols, dtypes, v.shape]).encode())
        return h.hexdigest()[:16]
    if isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        if a.dtype == object:
            return _fingerprint(pd.Series(a.ravel()), where) + str(a.shape)
        h = hashlib.sha256(a.tobytes())
        h.update(f"{a.dtype}{a.shape}".encode())
        return h.hexdigest()[:16]
    if isinstance(v, (list, tuple)):
        return [_fingerprint(x, where) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _fingerprint(x, where) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str, np.integer, np.floating)):
        return v.item() if isinstance(v, np.generic) else v
    raise TypeError(f"{where}: a {type(v).__name__} cannot be part of a result cache key")
