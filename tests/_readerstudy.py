"""Helpers of the reader-study tests: a tiny image pool that tries to leak, and a live server."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from bmglib.data import schema, synthetic


def make_pool(root: Path, n_per_cell: int = 1, sources=("real", "bmg")) -> pd.DataFrame:
    """``n_per_cell`` procedural images per source × FST × lesion. Every file tries to leak: its
    name spells its source and cell, a PNG text chunk does too, real images are larger (48×40 px)
    and carry EXIF, synthetic ones are 32 px."""
    rows = []
    for s_idx, source in enumerate(sources):
        folder = root / source
        folder.mkdir(parents=True, exist_ok=True)
        for f in schema.FST_LEVELS:
            for j, lesion in enumerate(schema.LESIONS):
                for k in range(n_per_cell):
                    img = Image.fromarray(synthetic.render(f, lesion, 32, rng=[s_idx, f, j, k]).image)
                    info = PngImagePlugin.PngInfo()
                    info.add_text("parameters", f"{source} {lesion} FST {f}")
                    path = folder / f"{source}_fst{f}_{lesion}_{k}.png"
                    if source == "real":
                        img = img.resize((48, 40))
                        exif = Image.Exif()
                        exif[0x010E] = f"real {lesion} FST {f}"  # ImageDescription
                        img.save(path, pnginfo=info, exif=exif)
                    else:
                        img.save(path, pnginfo=info)
                    rows.append({"source": source, "fitzpatrick_scale": f, "lesion": lesion,
                                 "image_path": str(path), "origin": str(folder)})
    return pd.DataFrame(rows)


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG file, in order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        out.append(data[i + 4:i + 8])
        i += 12 + n
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app in a thread on 127.0.0.1 (``stop()`` and ``start()`` again to test a
    restart on the same port)."""

    def __init__(self, make_app, port: int | None = None):
        self.make_app, self.port = make_app, port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = self.thread = None

    def start(self) -> LiveServer:
        import uvicorn

        config = uvicorn.Config(self.make_app(), host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def raw_get(port: int, raw_path: str) -> int:
    """Status of a GET whose path is sent byte for byte (no client-side normalisation of ``..``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def answers_equal(exported: pd.DataFrame, given: dict) -> bool:
    """The export holds exactly the answers ``given`` ({(reader, image): answer dict})."""
    got = {(r.reader_id, r.image_id): {"realism": int(r.realism), "judgement": r.judgement,
                                        "confidence": int(r.confidence),
                                        "lesion": None if pd.isna(r.lesion_answer) else r.lesion_answer,
                                        "fst": None if pd.isna(r.fst_answer) else int(r.fst_answer)}
           for r in exported.itertuples()}
    want = {k: {q: v.get(q) for q in ("realism", "judgement", "confidence", "lesion", "fst")}
            for k, v in given.items()}
    return got == want and not np.any(exported.duplicated(["reader_id", "image_id"]))
