"""The reader-study web app (FastAPI): a page per personal link, an admin page, the CSV export.

    app = create_app(paths.reader_study_dir("pilot"))
    uvicorn.run(app, host="127.0.0.1", port=8765)        # what ``python -m bmglib.readerstudy serve`` does

Routes (``<token>``: 43 URL-safe characters, 256 random bits):

==================================  ==========================================================
``GET  /r/<token>``                 the rating page (``static/reader.html``)
``GET  /api/r/<token>/state``       the reader's order, their own answers, where to resume
``GET  /api/r/<token>/images/<id>`` one study image (PNG), by its opaque id
``PUT  /api/r/<token>/answers/<id>`` save (or change) the reader's answer for one image
``GET  /a/<token>``                 the admin page (``static/admin.html``)
``GET  /api/a/<token>/state``       progress per reader, their links, the design
``POST /api/a/<token>/readers``     enrol a reader (JSON ``{"name": ...}``)
``GET  /api/a/<token>/export.csv``  the tidy answers table, unblinded (``Store.export``)
==================================  ==========================================================

Nothing else is served: no static folder, no directory listing, no API docs. An image is read
from the path the study's key gives for an id in that key, never from a path in the request; the
database, the key and ``tokens.json`` have no route. A reader's token selects the reader, and no
route takes a reader id, so a reader can read and change only their own answers. Bad input gets a
4xx with a sentence saying what was wrong, and changes nothing. Every response carries
``Cache-Control: no-store`` (images: private), ``Referrer-Policy: no-referrer`` (the token is in
the URL), ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy that allows only the
page's own inline script and style (by hash) and same-origin images and requests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bmglib.data import schema
from bmglib.readerstudy import design, store

STATIC = Path(__file__).parent / "static"
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
IMAGE_ID_RE = re.compile(r"[0-9a-f]{16}")
MAX_BODY = 4096  # bytes: an answer is ~150
BASE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY", "Cross-Origin-Resource-Policy": "same-origin"}
NOT_FOUND_HTML = ("<!doctype html><meta charset=utf-8><title>Not found</title>"
                  "<p>This link is not valid. Please ask the study coordinator for your personal link.")


def _page(name: str) -> tuple[str, str]:
    """A static page and its Content-Security-Policy (its one inline script and style, by hash)."""
    html = (STATIC / name).read_text()

    def digest(tag: str) -> str:
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    csp = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
           "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp


def _reader_state(study: design.Study, st: store.Store, reader: store.Reader) -> dict:
    answers = st.answers(reader)
    position = next((i for i, image_id in enumerate(reader.order) if image_id not in answers), len(reader.order))
    return {"title": study.meta["title"], "description": study.meta["description"],
            "reader": {"id": reader.reader_id, "name": reader.name}, "n_images": len(reader.order),
            "order": list(reader.order), "answers": answers, "position": position,
            "display_size": study.meta["display"]["size"],
            "realism_anchors": store.REALISM_SCALE, "confidence_anchors": store.CONFIDENCE_SCALE,
            "lesions": [*design.LESION_CHOICES.items(), ("unsure", "Unsure")],
            "fst": [(f, schema.FST_ROMAN[f]) for f in schema.FST_LEVELS]}


def _error_detail(err: ValidationError) -> str:
    """Pydantic's errors as one sentence per field, e.g. ``realism: must be ≤ 5 (got 7)``."""
    parts = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "body"
        got = f" (got {json.dumps(e['input'])})" if "input" in e and not isinstance(e["input"], dict) else ""
        parts.append(f"{where}: {e['msg']}{got}")
    return "invalid answer: " + "; ".join(parts)


def create_app(study_dir: str | Path) -> FastAPI:
    """The app of one study folder (:func:`bmglib.readerstudy.design.create_study`)."""
    study = design.load_study(study_dir)
    st = store.Store(study)
    known = frozenset(study.image_ids)
    reader_html, reader_csp = _page("reader.html")
    admin_html, admin_csp = _page("admin.html")
    app = FastAPI(title="reader study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study, app.state.store = study, st

    @app.middleware("http")
    async def headers(request: Request, call_next):
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            response = JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)
        else:
            response = await call_next(request)
        for k, v in BASE_HEADERS.items():
            response.headers.setdefault(k, v)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404 and not request.url.path.startswith("/api/"):
            return HTMLResponse(NOT_FOUND_HTML, status_code=404)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    def reader_or_404(token: str) -> store.Reader:
        reader = st.reader(token) if TOKEN_RE.fullmatch(token) else None
        if reader is None:
            raise HTTPException(404, "unknown link: ask the study coordinator for your personal link")
        return reader

    def admin_or_404(token: str) -> None:
        if not (TOKEN_RE.fullmatch(token) and st.is_admin(token)):
            raise HTTPException(404, "unknown link")

    def image_or_404(image_id: str) -> str:
        if not (IMAGE_ID_RE.fullmatch(image_id) and image_id in known):
            raise HTTPException(404, f"unknown image id {image_id[:40]!r}")
        return image_id

    @app.get("/", response_class=HTMLResponse)
    def home():
        return HTMLResponse("<!doctype html><meta charset=utf-8><title>Reader study</title>"
                            "<p>This server hosts a blinded reader study. Please open the personal "
                            "link you were sent.")

    @app.get("/r/{token}", response_class=HTMLResponse)
    def reader_page(token: str):
        reader_or_404(token)
        return HTMLResponse(reader_html, headers={"Content-Security-Policy": reader_csp})

    @app.get("/api/r/{token}/state")
    def reader_state(token: str):
        return _reader_state(study, st, reader_or_404(token))

    @app.get("/api/r/{token}/images/{image_id}")
    def image(token: str, image_id: str):
        reader_or_404(token)
        path = study.image_path(image_or_404(image_id))
        return Response(path.read_bytes(), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=86400"})

    @app.put("/api/r/{token}/answers/{image_id}")
    async def answer(token: str, image_id: str, request: Request):
        reader = await run_in_threadpool(reader_or_404, token)
        image_or_404(image_id)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "send the answer as JSON (Content-Type: application/json)")
        body = await request.body()
        if len(body) > MAX_BODY:  # a chunked body carries no Content-Length for the middleware
            raise HTTPException(413, f"request body over {MAX_BODY} bytes")
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HTTPException(400, f"the body is not valid JSON ({err})") from None
        try:
            parsed = store.Answer.model_validate(payload)
        except ValidationError as err:
            raise HTTPException(422, _error_detail(err)) from None
        saved = await run_in_threadpool(st.save, reader, image_id, parsed)
        n_done = len(await run_in_threadpool(st.answers, reader))
        return {"image_id": image_id, "answer": saved, "answered": n_done, "total": len(reader.order)}

    @app.get("/a/{token}", response_class=HTMLResponse)
    def admin_page(token: str):
        admin_or_404(token)
        return HTMLResponse(admin_html, headers={"Content-Security-Policy": admin_csp})

    @app.get("/api/a/{token}/state")
    def admin_state(token: str):
        admin_or_404(token)
        tokens = st.tokens()
        progress = st.progress()
        readers = [{**{k: (None if v != v else v) for k, v in row.items()},  # NaN -> null
                    "link": f"/r/{tokens[row['reader_id']]}" if row["reader_id"] in tokens else None}
                   for row in progress.to_dict(orient="records")]
        meta = {k: study.meta[k] for k in ("name", "title", "n_images", "sources", "design", "display",
                                            "description", "created_utc", "git_commit")}
        return {"study": meta, "readers": readers}

    @app.post("/api/a/{token}/readers")
    async def add_reader(token: str, request: Request):
        await run_in_threadpool(admin_or_404, token)
        try:
            name = json.loads(await request.body())["name"]
            if not isinstance(name, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise HTTPException(400, 'send JSON {"name": "..."}') from None
        try:
            reader, reader_token = await run_in_threadpool(st.add_reader, name)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return {"reader_id": reader.reader_id, "name": reader.name, "link": f"/r/{reader_token}"}

    @app.get("/api/a/{token}/export.csv")
    def export(token: str):
        admin_or_404(token)
        buf = io.StringIO()
        st.export().to_csv(buf, index=False)
        return Response(buf.getvalue(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{study.name}_answers.csv"'})

    return app
