"""The answers of a reader study in SQLite (standard library): one transaction per answer.

Every answer is committed before the server replies, in WAL mode with ``synchronous=FULL``, so
closing the browser, a crash or a restart of the server loses nothing that a reader was told was
saved. A reader's latest answer per image is in ``answers`` (``revisions`` counts changes); every
submission is also appended to ``events`` (the audit trail).

Tokens (``secrets.token_urlsafe(32)``: 256 random bits) are stored in the database as SHA-256
hashes only, so a copy of ``answers.sqlite`` handed to an analyst grants no access to the live
study; the plain links are kept for the coordinator in ``tokens.json`` (mode 0600), beside it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bmglib.readerstudy import design

REALISM_SCALE = {1: "unusable", 5: "indistinguishable from real"}  # the seed paper's anchors
CONFIDENCE_SCALE = {1: "guessing", 5: "certain"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readers (
    reader_id TEXT PRIMARY KEY, number INTEGER UNIQUE NOT NULL, name TEXT NOT NULL,
    token_sha256 TEXT UNIQUE NOT NULL, order_json TEXT NOT NULL, simulated INTEGER NOT NULL,
    created_utc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    reader_id TEXT NOT NULL REFERENCES readers(reader_id), image_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    realism INTEGER NOT NULL CHECK (realism BETWEEN 1 AND 5),
    judgement TEXT NOT NULL CHECK (judgement IN ('real', 'synthetic')),
    confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5),
    lesion TEXT, fst INTEGER CHECK (fst IS NULL OR fst BETWEEN 1 AND 6),
    seconds REAL NOT NULL, seconds_total REAL NOT NULL, revisions INTEGER NOT NULL,
    first_utc TEXT NOT NULL, answered_utc TEXT NOT NULL,
    PRIMARY KEY (reader_id, image_id));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, reader_id TEXT NOT NULL, image_id TEXT NOT NULL,
    answer_json TEXT NOT NULL, utc TEXT NOT NULL);
"""


class Answer(BaseModel):
    """One reader's answer for one image, as the page sends it (strict: no coercion, no extras)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    realism: int = Field(ge=1, le=5, description="1 = unusable … 5 = indistinguishable from real")
    judgement: Literal["real", "synthetic"]
    confidence: int = Field(ge=1, le=5, description="in the judgement: 1 = guessing … 5 = certain")
    # schema.LESIONS or "unsure" (a test keeps the two in step)
    lesion: Literal["melanoma", "nevus", "seborrheic_keratosis", "other", "unsure"] | None = None
    fst: int | None = Field(default=None, ge=1, le=6, description="the skin type the reader sees")
    seconds: float = Field(ge=0, le=86_400, description="time on the image before this answer")


def synthetic_score(judgement: str, confidence: int) -> int:
    """Judgement and confidence as one ordinal 1..10 score of "synthetic" (for ROC analysis):
    1 = real, certain … 5 = real, guessing; 6 = synthetic, guessing … 10 = synthetic, certain."""
    return 5 + confidence if judgement == "synthetic" else 6 - confidence


@dataclass(frozen=True)
class Reader:
    reader_id: str
    number: int
    name: str
    order: tuple[str, ...]
    simulated: bool


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """The database of one study (``<study>/answers.sqlite``) and its ``tokens.json``."""

    def __init__(self, study: design.Study):
        self.study = study
        self.path = study.dir / "answers.sqlite"
        self.tokens_path = study.dir / "tokens.json"
        self._ids = frozenset(study.image_ids)
        with self._tx() as db:
            db.executescript(_SCHEMA)
            if db.execute("SELECT value FROM meta WHERE key = 'admin_sha256'").fetchone() is None:
                token = secrets.token_urlsafe(32)
                db.execute("INSERT INTO meta VALUES ('admin_sha256', ?)", (hash_token(token),))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('study', ?)", (study.name,))
                self._remember("admin", token)

    @contextmanager
    def _tx(self):
        """One connection and one transaction: committed on success, rolled back on error."""
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.row_factory = sqlite3.Row
            with db:
                yield db

    # --- tokens ----------------------------------------------------------------------------------

    def _remember(self, who: str, token: str) -> None:
        tokens = self.tokens()
        tokens[who] = token
        tmp = self.tokens_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(tokens, f, indent=2)
        tmp.replace(self.tokens_path)

    def tokens(self) -> dict[str, str]:
        """``{"admin": token, reader_id: token, ...}`` (the coordinator's copy of the links)."""
        return json.loads(self.tokens_path.read_text()) if self.tokens_path.exists() else {}

    def is_admin(self, token: str) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'admin_sha256'").fetchone()
        return row is not None and hmac.compare_digest(row["value"], hash_token(token))

    def rotate(self, who: str) -> str:
        """A new token for ``"admin"`` or a reader id; the old link stops working at once."""
        token = secrets.token_urlsafe(32)
        with self._tx() as db:
            if who == "admin":
                db.execute("UPDATE meta SET value = ? WHERE key = 'admin_sha256'", (hash_token(token),))
            elif db.execute("UPDATE readers SET token_sha256 = ? WHERE reader_id = ?",
                            (hash_token(token), who)).rowcount != 1:
                raise KeyError(f"no reader {who!r} in {self.path}")
        self._remember(who, token)
        return token

    # --- readers ---------------------------------------------------------------------------------

    def add_reader(self, name: str, simulated: bool = False) -> tuple[Reader, str]:
        """Enrol a reader; returns the reader and their token (the link is ``/r/<token>``)."""
        name = " ".join(str(name).split())[:80]
        if not name:
            raise ValueError("a reader needs a name (e.g. 'Dermatologist A')")
        token = secrets.token_urlsafe(32)
        with self._tx() as db:
            number = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM readers").fetchone()[0]
            reader_id = f"R{number:02d}"
            order = design.reader_order(self.study, number)
            db.execute("INSERT INTO readers VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (reader_id, number, name, hash_token(token), json.dumps(order), int(simulated), _now()))
        self._remember(reader_id, token)
        return Reader(reader_id, number, name, tuple(order), simulated), token

    def reader(self, token: str) -> Reader | None:
        """The reader a token belongs to, or None."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM readers WHERE token_sha256 = ?", (hash_token(token),)).fetchone()
        return None if row is None else self._reader(row)

    def readers(self) -> list[Reader]:
        with self._tx() as db:
            return [self._reader(r) for r in db.execute("SELECT * FROM readers ORDER BY number")]

    @staticmethod
    def _reader(row) -> Reader:
        return Reader(row["reader_id"], row["number"], row["name"], tuple(json.loads(row["order_json"])),
                      bool(row["simulated"]))

    # --- answers ---------------------------------------------------------------------------------

    def save(self, reader: Reader, image_id: str, answer: Answer, db=None) -> dict:
        """Record ``answer``; a repeated answer replaces the last one (``revisions`` + 1). Raises
        KeyError for an image that is not in the reader's study."""
        if image_id not in self._ids:
            raise KeyError(f"unknown image id {image_id!r}")
        if db is None:
            with self._tx() as db:
                return self.save(reader, image_id, answer, db)
        a, now = answer.model_dump(), _now()
        db.execute("INSERT INTO events (reader_id, image_id, answer_json, utc) VALUES (?, ?, ?, ?)",
                   (reader.reader_id, image_id, json.dumps(a), now))
        db.execute(
            """INSERT INTO answers VALUES (:reader_id, :image_id, :position, :realism, :judgement,
                   :confidence, :lesion, :fst, :seconds, :seconds, 1, :now, :now)
               ON CONFLICT (reader_id, image_id) DO UPDATE SET realism = excluded.realism,
                   judgement = excluded.judgement, confidence = excluded.confidence,
                   lesion = excluded.lesion, fst = excluded.fst, seconds = excluded.seconds,
                   seconds_total = seconds_total + excluded.seconds, revisions = revisions + 1,
                   answered_utc = excluded.answered_utc""",
            {**a, "reader_id": reader.reader_id, "image_id": image_id, "now": now,
             "position": reader.order.index(image_id) + 1})
        return a

    def save_many(self, reader: Reader, answers: dict[str, Answer]) -> None:
        """Many answers in one transaction (simulated readers; the web app saves one at a time)."""
        with self._tx() as db:
            for image_id, answer in answers.items():
                self.save(reader, image_id, answer, db)

    def answers(self, reader: Reader) -> dict[str, dict]:
        """The reader's own current answers, by image id (what the page restores from)."""
        cols = "image_id, realism, judgement, confidence, lesion, fst, seconds_total, revisions"
        with self._tx() as db:
            rows = db.execute(f"SELECT {cols} FROM answers WHERE reader_id = ?", (reader.reader_id,))
            return {r["image_id"]: {k: r[k] for k in r.keys() if k != "image_id"} for r in rows}

    def raw_answers(self) -> pd.DataFrame:
        with self._tx() as db:
            return pd.read_sql_query(
                "SELECT a.*, r.name AS reader_name, r.simulated FROM answers a "
                "JOIN readers r USING (reader_id) ORDER BY r.number, a.position", db)

    def progress(self) -> pd.DataFrame:
        """Per reader: answered, total, last answer time, median seconds per image."""
        n = len(self._ids)
        raw = self.raw_answers()
        rows = []
        for r in self.readers():
            mine = raw[raw["reader_id"] == r.reader_id]
            rows.append({"reader_id": r.reader_id, "name": r.name, "simulated": r.simulated,
                         "answered": len(mine), "total": n,
                         "last_answer_utc": mine["answered_utc"].max() if len(mine) else None,
                         "median_seconds": float(mine["seconds_total"].median()) if len(mine) else None})
        return pd.DataFrame(rows, columns=["reader_id", "name", "simulated", "answered", "total",
                                           "last_answer_utc", "median_seconds"])

    def export(self) -> pd.DataFrame:
        """The tidy table: one row per (reader, image) answer, joined with the unblinding key."""
        raw = self.raw_answers()
        key = self.study.key[["image_id", "source", "is_synthetic", "fitzpatrick_scale", "fst_group",
                              "lesion"]].rename(columns={"lesion": "true_lesion"})
        out = raw.merge(key, on="image_id", how="left", validate="many_to_one")
        out = out.rename(columns={"lesion": "lesion_answer", "fst": "fst_answer"})
        out["synthetic_score"] = [synthetic_score(j, c) for j, c in zip(out["judgement"], out["confidence"],
                                                                        strict=True)]
        out["simulated"] = out["simulated"].astype(bool)
        out.insert(0, "study", self.study.name)
        out["fst_answer"] = out["fst_answer"].astype("Int64")
        return out[EXPORT_COLUMNS].reset_index(drop=True)


#: the columns of the tidy CSV export, in order
EXPORT_COLUMNS = ["study", "reader_id", "reader_name", "simulated", "image_id", "position", "realism",
                  "judgement", "confidence", "synthetic_score", "lesion_answer", "fst_answer", "seconds",
                  "seconds_total", "revisions", "first_utc", "answered_utc", "source", "is_synthetic",
                  "fitzpatrick_scale", "fst_group", "true_lesion"]
