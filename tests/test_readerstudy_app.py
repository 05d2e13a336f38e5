"""The reader-study web app through FastAPI's TestClient (and raw HTTP for path tricks)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from _readerstudy import LiveServer, answers_equal, make_pool, raw_get
from fastapi.testclient import TestClient

from bmglib.readerstudy import cli, design, store
from bmglib.readerstudy.app import create_app

GOOD = {"realism": 4, "judgement": "synthetic", "confidence": 3, "lesion": "nevus", "fst": 5, "seconds": 2.5}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(tmp_path_factory.mktemp("pool"), n_per_cell=1)


@pytest.fixture
def setup(pool, tmp_path):
    """A fresh 48-image study with two readers; the client, tokens and the readers' orders."""
    study = design.create_study(tmp_path / "study", pool, design.DesignConfig(n_per_cell=1, display_size=64))
    st = store.Store(study)
    (a, ta), (b, tb) = st.add_reader("Dr A"), st.add_reader("Dr B")
    client = TestClient(create_app(study.dir))
    return {"study": study, "client": client, "a": ta, "b": tb, "admin": st.tokens()["admin"],
            "order_a": list(a.order), "order_b": list(b.order)}


def put(client, token, image_id, body, **kw):
    return client.put(f"/api/r/{token}/answers/{image_id}", json=body, **kw)


def export(s) -> pd.DataFrame:
    r = s["client"].get(f"/api/a/{s['admin']}/export.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    return pd.read_csv(io.StringIO(r.text), dtype={"image_id": str})


def test_reader_page_state_and_image(setup):
    c, tok = setup["client"], setup["a"]
    r = c.get(f"/r/{tok}")
    assert r.status_code == 200 and "<script>" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["x-content-type-options"] == "nosniff"
    state = c.get(f"/api/r/{tok}/state").json()
    assert state["order"] == setup["order_a"] and state["position"] == 0 and state["answers"] == {}
    assert state["n_images"] == 48 and state["reader"]["name"] == "Dr A"
    assert c.get(f"/api/r/{tok}/state").headers["cache-control"] == "no-store"
    img = c.get(f"/api/r/{tok}/images/{state['order'][0]}")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content == setup["study"].image_path(state["order"][0]).read_bytes()
    assert "last-modified" not in img.headers and "etag" not in img.headers  # no write-order clue


def test_wrong_tokens_get_404(setup):
    c = setup["client"]
    image_id = setup["order_a"][0]
    wrong = "A" * 43
    for url in (f"/r/{wrong}", "/r/short", f"/api/r/{wrong}/state", f"/api/r/{wrong}/images/{image_id}",
                f"/a/{wrong}", f"/api/a/{wrong}/state", f"/api/a/{wrong}/export.csv",
                f"/a/{setup['a']}", f"/api/a/{setup['a']}/export.csv",  # a reader's token is no admin's
                f"/r/{setup['admin']}", f"/api/r/{setup['admin']}/state"):  # and vice versa
        assert c.get(url).status_code == 404, url
    assert "not valid" in c.get(f"/r/{wrong}").text
    assert put(c, wrong, image_id, GOOD).status_code == 404
    assert c.post(f"/api/a/{setup['a']}/readers", json={"name": "Mallory"}).status_code == 404
    assert export(setup).empty


TRICKS = ["../key.csv", "..%2Fkey.csv", "..%2F..%2Fkey.csv", "%2e%2e%2fkey.csv", "%2e%2e/%2e%2e/key.csv",
          "..%5Ckey.csv", "%2Fetc%2Fpasswd", "%252e%252e%252fkey.csv", "key.csv", "answers.sqlite",
          "tokens.json", "study.json", "{id}.png", "{id}%00", "{id}/..", "{ID}"]


def test_only_study_images_are_served(setup):
    c, tok, study = setup["client"], setup["a"], setup["study"]
    image_id = setup["order_a"][0]
    for trick in TRICKS:
        path = trick.replace("{id}", image_id).replace("{ID}", image_id.upper())
        assert c.get(f"/api/r/{tok}/images/{path}").status_code == 404, path
    for url in ("/key.csv", "/answers.sqlite", "/tokens.json", "/study.json", f"/images/{image_id}.png",
                f"/{study.dir}/key.csv", "/static/reader.html", "/docs", "/openapi.json", "/redoc",
                "//etc/passwd", "/etc/passwd", f"/r/{tok}/../../key.csv"):
        assert c.get(url).status_code == 404, url


def test_path_tricks_over_raw_http(setup):
    """The same tricks sent byte for byte to uvicorn (a client library would normalise ``..``)."""
    tok, study = setup["a"], setup["study"]
    server = LiveServer(lambda: create_app(study.dir)).start()
    try:
        assert raw_get(server.port, f"/api/r/{tok}/images/{setup['order_a'][0]}") == 200
        for raw in (f"/api/r/{tok}/images/../../../key.csv", f"/api/r/{tok}/images/..%2F..%2Fkey.csv",
                    f"/api/r/{tok}/images/%2Fetc%2Fpasswd", f"/api/r/{tok}/images/{study.dir}/key.csv",
                    f"/api/r/{tok}/images/..\\..\\key.csv", "/../answers.sqlite", "/%2e%2e/key.csv",
                    f"/r/{tok}/../../tokens.json", "//etc/passwd", f"/api/r/{tok}/images//etc/passwd"):
            assert raw_get(server.port, raw) in (400, 404), raw
    finally:
        server.stop()


BAD = [({**GOOD, "realism": 0}, 422, "realism"), ({**GOOD, "realism": 7}, 422, "realism"),
       ({**GOOD, "realism": "5"}, 422, "realism"), ({**GOOD, "realism": 4.5}, 422, "realism"),
       ({**GOOD, "realism": True}, 422, "realism"), ({**GOOD, "confidence": 6}, 422, "confidence"),
       ({**GOOD, "confidence": 0}, 422, "confidence"), ({**GOOD, "judgement": "maybe"}, 422, "judgement"),
       ({**GOOD, "lesion": "bcc"}, 422, "lesion"), ({**GOOD, "fst": 7}, 422, "fst"),
       ({**GOOD, "fst": 0}, 422, "fst"), ({**GOOD, "seconds": -1}, 422, "seconds"),
       ({**GOOD, "reader_id": "R02"}, 422, "reader_id"), ({k: v for k, v in GOOD.items() if k != "realism"},
                                                          422, "realism"), ([GOOD], 422, "dictionary")]


def test_bad_answers_are_refused_and_change_nothing(setup):
    c, tok = setup["client"], setup["a"]
    first, second = setup["order_a"][:2]
    assert put(c, tok, first, GOOD).status_code == 200
    before = export(setup)
    for body, status, word in BAD:
        r = put(c, tok, second, body)
        assert r.status_code == status and word in r.json()["detail"], (body, r.text)
        r = put(c, tok, first, body)  # nor does it overwrite an answer given before
        assert r.status_code == status
    url = f"/api/r/{tok}/answers/{second}"
    r = c.put(url, content=b"realism=5", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    assert c.put(url, content=b"", headers={"content-type": "application/json"}).status_code == 400
    r = c.put(url, content=json.dumps(GOOD), headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "JSON" in r.json()["detail"]
    r = c.put(url, content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert put(c, tok, "0" * 16, GOOD).status_code == 404
    assert put(c, tok, "../key.csv", GOOD).status_code == 404
    assert c.post(f"/api/r/{tok}/answers/{second}", json=GOOD).status_code == 405
    pd.testing.assert_frame_equal(export(setup), before)
    assert answers_equal(export(setup), {("R01", first): GOOD})


def test_a_reader_sees_and_changes_only_their_own_answers(setup):
    c, a, b = setup["client"], setup["a"], setup["b"]
    image_id = setup["order_a"][0]
    assert put(c, a, image_id, GOOD).status_code == 200
    assert c.get(f"/api/r/{b}/state").json()["answers"] == {}
    other = {**GOOD, "realism": 1, "judgement": "real", "lesion": None, "fst": None}
    assert put(c, b, image_id, other).status_code == 200
    assert c.get(f"/api/r/{a}/state").json()["answers"][image_id]["realism"] == 4
    assert c.get(f"/api/r/{b}/state").json()["answers"][image_id]["realism"] == 1
    assert answers_equal(export(setup), {("R01", image_id): GOOD, ("R02", image_id): other})


def test_resume_after_reload_and_restart(setup):
    c, tok, order = setup["client"], setup["a"], setup["order_a"]
    given = {}
    for k, image_id in enumerate(order[:5]):
        given[("R01", image_id)] = {**GOOD, "realism": 1 + k % 5, "lesion": None}
        assert put(c, tok, image_id, given[("R01", image_id)]).json()["answered"] == k + 1
    assert c.get(f"/api/r/{tok}/state").json()["position"] == 5
    restarted = TestClient(create_app(setup["study"].dir))  # a new app on the same folder
    state = restarted.get(f"/api/r/{tok}/state").json()
    assert state["position"] == 5 and state["order"] == order and len(state["answers"]) == 5
    changed = {**given[("R01", order[1])], "realism": 5, "seconds": 1.5}
    assert put(restarted, tok, order[1], changed).status_code == 200
    given[("R01", order[1])] = changed
    table = export(setup)
    assert answers_equal(table, given)
    row = table.set_index("image_id").loc[order[1]]
    assert row["revisions"] == 2 and row["seconds_total"] == pytest.approx(4.0) and row["position"] == 2


def test_admin_progress_readers_and_export(setup):
    c, admin = setup["client"], setup["admin"]
    r = c.get(f"/a/{admin}")
    assert r.status_code == 200 and "style-src 'sha256-" in r.headers["content-security-policy"]
    for image_id in setup["order_b"][:3]:
        put(c, setup["b"], image_id, GOOD)
    state = c.get(f"/api/a/{admin}/state").json()
    rows = {r["reader_id"]: r for r in state["readers"]}
    assert rows["R01"]["answered"] == 0 and rows["R02"]["answered"] == 3 and rows["R02"]["total"] == 48
    assert rows["R02"]["link"] == f"/r/{setup['b']}" and state["study"]["n_images"] == 48
    new = c.post(f"/api/a/{admin}/readers", json={"name": "Dr C"}).json()
    assert new["reader_id"] == "R03" and c.get(new["link"]).status_code == 200
    assert c.post(f"/api/a/{admin}/readers", json={"name": "  "}).status_code == 422
    assert c.post(f"/api/a/{admin}/readers", content=b"x", headers={"content-type": "application/json"}
                  ).status_code == 400
    table = export(setup)
    assert list(table.columns) == store.EXPORT_COLUMNS and len(table) == 3
    assert set(table["reader_id"]) == {"R02"} and (table["synthetic_score"] == 8).all()
    key = setup["study"].key.set_index("image_id")
    assert (table["source"].to_numpy() == key.loc[table["image_id"], "source"].to_numpy()).all()


def test_rotated_link_stops_working(setup):
    st = store.Store(setup["study"])
    new = st.rotate("R01")
    c = setup["client"]
    assert c.get(f"/api/r/{setup['a']}/state").status_code == 404
    assert c.get(f"/api/r/{new}/state").status_code == 200
    assert store.Store(setup["study"]).tokens()["R01"] == new


def test_database_holds_token_hashes_only(setup):
    raw = (setup["study"].dir / "answers.sqlite").read_bytes()
    assert setup["a"].encode() not in raw and setup["admin"].encode() not in raw
    assert (setup["study"].dir / "tokens.json").stat().st_mode & 0o077 == 0


def test_cli_binds_localhost_and_runs_a_study(pool, tmp_path, monkeypatch, capsys):
    assert cli.build_parser().parse_args(["serve", "x"]).host == "127.0.0.1"
    monkeypatch.setenv("BMG_DATA_ROOT", str(tmp_path))
    monkeypatch.setattr(design, "collect_pool", lambda *a, **k: pool)
    cli.main(["create", "pilot", "--variants", "bmg", "--n-per-cell", "1", "--readers", "2",
              "--display-size", "64"])
    out = capsys.readouterr().out
    assert "48 images" in out and out.count("/r/") == 2 and "/a/" in out
    cli.main(["add-reader", "pilot", "--name", "Dr Z"])
    assert "/r/" in capsys.readouterr().out
    cli.main(["status", "pilot"])
    assert "Dr Z" in capsys.readouterr().out
    cli.main(["export", "pilot"])
    assert "0 answers" in capsys.readouterr().out
    assert (tmp_path / "reader_studies" / "pilot" / "answers.csv").exists()
