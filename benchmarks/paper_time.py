"""Where the time of ``make paper`` goes: per executed notebook, from papermill's own records.

    python benchmarks/paper_time.py [--profile quick] [--top 3]

Reads ``build/<profile>/*.ipynb`` (what ``make paper`` wrote) and prints one row per executed
notebook: papermill's start time, its duration (seconds, as papermill measured it), its share of
the total, and the ``--top`` slowest cells with their first source line. Run it after a
``make paper``; a cached re-run's copies overwrite the first run's, so keep the first table.
Then one row per notebook (``02_conditional_finetune`` over all its variants and seeds, …):
how many runs, their seconds and share. ``--markdown``: both tables as Markdown, for the docs.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from bmglib import paths, report


def timings(build_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per notebook: notebook, start, seconds; per cell: notebook, cell, seconds, source)."""
    nbs, cells = [], []
    for path in sorted(build_dir.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        pm = nb.get("metadata", {}).get("papermill", {})
        if pm.get("duration") is None:
            continue
        nbs.append({"notebook": path.stem, "start": pm.get("start_time", ""), "seconds": float(pm["duration"])})
        for i, c in enumerate(nb["cells"]):
            d = c.get("metadata", {}).get("papermill", {}).get("duration")
            if d is not None:
                src = "".join(c.get("source", "")).strip().splitlines()
                cells.append({"notebook": path.stem, "cell": i, "seconds": float(d), "source": (src or [""])[0][:70]})
    return pd.DataFrame(nbs), pd.DataFrame(cells)


def by_stage(nbs: pd.DataFrame) -> pd.DataFrame:
    """Per notebook of the pipeline (the executed copies' names before ``__``): runs, seconds, share."""
    stage = nbs["notebook"].str.split("__").str[0]
    out = nbs.groupby(stage, sort=True).agg(runs=("seconds", "size"), seconds=("seconds", "sum"))
    out["minutes"] = out["seconds"] / 60
    out["share"] = out["seconds"] / nbs["seconds"].sum()
    return out.rename_axis("notebook").reset_index()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--top", type=int, default=3, help="slowest cells listed per notebook")
    ap.add_argument("--markdown", action="store_true", help="the tables as Markdown")
    args = ap.parse_args()
    build = paths.BUILD / args.profile
    nbs, cells = timings(build)
    if nbs.empty:  # not an error: `make benchmark` runs every benchmark, before or after a make paper
        print(f"no executed notebooks with papermill timings in {build}: run `make paper PROFILE={args.profile}` first")
        return
    nbs = nbs.sort_values("start")
    total = nbs["seconds"].sum()
    nbs["share"] = nbs["seconds"] / total
    stages = by_stage(nbs)
    show = (lambda t: report.to_markdown(t.round(2), digits=6)) if args.markdown else \
        (lambda t: t.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(show(nbs))
    print(f"total {total:.0f} s = {total / 60:.1f} min over {len(nbs)} notebooks\n")
    print(show(stages))
    if args.top:
        top = cells.sort_values("seconds", ascending=False).groupby("notebook").head(args.top)
        print("\nslowest cells:\n" + top.sort_values(["notebook", "seconds"], ascending=[True, False])
              .to_string(index=False, float_format=lambda v: f"{v:.1f}"))


if __name__ == "__main__":
    main()
