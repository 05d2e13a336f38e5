"""``python -m bmglib.readerstudy``: create, serve and export a blinded reader study.

    python -m bmglib.readerstudy create pilot --profile quick --variants bmg standard --readers 3
    python -m bmglib.readerstudy serve pilot                    # prints the links, serves on 127.0.0.1
    python -m bmglib.readerstudy add-reader pilot --name "Dermatologist D"
    python -m bmglib.readerstudy status pilot
    python -m bmglib.readerstudy export pilot --out answers.csv

A study lives in ``paths.reader_study_dir(NAME)`` (``data/reader_studies/NAME``).
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from bmglib import paths
from bmglib.readerstudy import design, store


def _create_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("design (create)")
    g.add_argument("--profile", default="quick", help="profile whose samples and test split to use")
    g.add_argument("--dataset", default="synthetic", help="the dataset notebook 01 prepared (real control)")
    g.add_argument("--variants", nargs="+", default=["bmg", "standard"],
                   help="sample sets to rate (notebook 03); commas also separate")
    g.add_argument("--purpose", default="eval", choices=["eval", "augment"], help="which sample set of each variant")
    g.add_argument("--n-per-cell", type=int, default=design.DesignConfig.n_per_cell,
                   help="images per source × FST × lesion cell")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--display-size", type=int, default=design.DesignConfig.display_size, help="pixels")
    g.add_argument("--upscale", default=design.DesignConfig.upscale, choices=list(design.FILTERS))
    g.add_argument("--keep-native", action="store_true",
                   help="do not bring every image to the smallest native size first")
    g.add_argument("--take-short", action="store_true", help="take short cells whole instead of failing")
    g.add_argument("--readers", type=int, default=3, help="readers to enrol (more later with add-reader)")
    g.add_argument("--title", default=design.DesignConfig.title, help="shown to readers")


def create(args) -> design.Study:
    variants = [v for part in args.variants for v in part.split(",") if v]
    pool = design.collect_pool(args.profile, variants, args.purpose, args.dataset)
    cfg = design.DesignConfig(n_per_cell=args.n_per_cell, seed=args.seed, display_size=args.display_size,
                              upscale=args.upscale, common_native=not args.keep_native,
                              on_short="take_all" if args.take_short else "error", title=args.title)
    study = design.create_study(paths.reader_study_dir(args.study), pool, cfg,
                                force=getattr(args, "force", False))
    st = store.Store(study)
    for k in range(args.readers):
        st.add_reader(f"Reader {k + 1}")
    print(f"created {study.dir}: {study.meta['n_images']} images")
    print(design.design_table(study).to_string())
    for s in study.meta["short_cells"]:
        print(f"  short cell: {s}")
    return study


def _base_url(host: str, port: int) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def print_links(study: design.Study, base: str) -> None:
    st = store.Store(study)
    tokens = st.tokens()
    print(f"admin  {base}/a/{tokens['admin']}" if "admin" in tokens else "admin  (link lost: run rotate admin)")
    for r in st.readers():
        link = f"{base}/r/{tokens[r.reader_id]}" if r.reader_id in tokens else f"(link lost: rotate {r.reader_id})"
        print(f"{r.reader_id:<6} {link}   {r.name}{' (simulated)' if r.simulated else ''}")


def serve(args) -> None:
    import uvicorn

    from bmglib.readerstudy.app import create_app

    folder = paths.reader_study_dir(args.study)
    if not (folder / "study.json").exists():
        if not args.create:
            raise SystemExit(f"{folder} holds no study: create it first, or pass --create")
        create(args)
    elif args.create:
        print(f"{folder}: the study exists; serving it unchanged (its design options are in study.json)")
    app = create_app(folder)
    base = _base_url(args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: bound to {args.host}: reachable from the network. Links are secrets; put the "
              "server behind HTTPS (a reverse proxy) before sending them outside the lab.")
    print(f"serving {folder} on {base}  (Ctrl-C stops; every answer is already saved)")
    print_links(app.state.study, base)
    sys.stdout.flush()
    # no access log: every request line would carry a reader's token
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bmglib.readerstudy", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create", help="draw a study from sample sets and the real test split")
    p.add_argument("study", help="study name (letters, digits, - and _)")
    p.add_argument("--force", action="store_true", help="replace an existing study (its answers are lost)")
    _create_options(p)
    p = sub.add_parser("serve", help="serve a study (127.0.0.1 unless --host) and print the links")
    p.add_argument("study")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--create", action="store_true", help="create the study first if it does not exist")
    _create_options(p)
    p = sub.add_parser("add-reader", help="enrol a reader and print their link")
    p.add_argument("study")
    p.add_argument("--name", required=True)
    p.add_argument("--base-url", default="http://127.0.0.1:8765")
    p = sub.add_parser("rotate", help="replace a reader's (or the admin's) link; the old one stops working")
    p.add_argument("study")
    p.add_argument("who", help="a reader id (R01, ...) or admin")
    p.add_argument("--base-url", default="http://127.0.0.1:8765")
    p = sub.add_parser("links", help="print the admin and reader links")
    p.add_argument("study")
    p.add_argument("--base-url", default="http://127.0.0.1:8765")
    p = sub.add_parser("status", help="progress per reader")
    p.add_argument("study")
    p = sub.add_parser("export", help="write the tidy answers CSV (unblinded)")
    p.add_argument("study")
    p.add_argument("--out", type=Path, default=None, help="default: <study>/answers.csv")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:  # a sentence, not a traceback
        raise SystemExit(f"error: {err.args[0] if isinstance(err, KeyError) else err}") from None


def run(args) -> None:

    if args.command == "create":
        study = create(args)
        print_links(study, "http://127.0.0.1:8765")
        return
    if args.command == "serve":
        serve(args)
        return
    study = design.load_study(paths.reader_study_dir(args.study))
    st = store.Store(study)
    if args.command == "add-reader":
        reader, token = st.add_reader(args.name)
        print(f"{reader.reader_id:<6} {args.base_url}/r/{token}   {reader.name}")
    elif args.command == "rotate":
        token = st.rotate(args.who)
        kind = "a" if args.who == "admin" else "r"
        print(f"{args.who:<6} {args.base_url}/{kind}/{token}   (the old link no longer works)")
    elif args.command == "links":
        print_links(study, args.base_url)
    elif args.command == "status":
        print(st.progress().to_string(index=False))
    elif args.command == "export":
        out = args.out or study.dir / "answers.csv"
        table = st.export()
        table.to_csv(out, index=False)
        print(f"{out}: {len(table)} answers from {table['reader_id'].nunique()} reader(s)")


if __name__ == "__main__":
    main()
