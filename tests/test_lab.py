"""`make lab`: JupyterLab starts on the venv, lists and opens the notebooks, runs bmglib, and
tqdm progress bars render as widgets (the widgets extension is loaded, the kernel sends widgets).

The server is the Makefile's own command (``make -o STAMP lab``: the venv is not rebuilt), on a
free port of 127.0.0.1 with a token, with Jupyter's user config and data dirs in a temporary
folder so that nothing of the user's is read or written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from bmglib import paths

websocket = pytest.importorskip("websocket", reason="websocket-client (a jupyter_server dependency)")
pytest.importorskip("jupyterlab", reason="JupyterLab is the `lab` extra: make venv installs it")

WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base URL, requests session with the token) of a `make lab` server; stopped afterwards."""
    if shutil.which("make") is None:
        pytest.skip("make not found")
    home = tmp_path_factory.mktemp("jupyter")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} "
            f"--ServerApp.port_retries=0 --IdentityProvider.token={token}")
    cmd = ["make", "-s", "-o", f"{sys.prefix}/.installed", "lab", f"VENV={sys.prefix}", f"LAB_ARGS={args}"]
    log = open(home / "server.log", "w+")  # read back on failure; closed below
    proc = subprocess.Popen(cmd, cwd=paths.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: make + jupyter
    base = f"http://127.0.0.1:{port}"
    http = requests.Session()
    http.headers["Authorization"] = f"token {token}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.get(f"{base}/api/status", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"`{' '.join(cmd)}` did not serve {base}:\n{log.read()[-3000:]}")
            time.sleep(0.3)
        yield base, http, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_lab_lists_and_opens_the_notebooks(lab):
    base, http, _ = lab
    listing = http.get(f"{base}/api/contents/notebooks", params={"content": 1}, timeout=10).json()
    served = sorted(f["name"] for f in listing["content"] if f["type"] == "notebook")
    on_disk = sorted(p.name for p in (paths.REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert on_disk and set(on_disk) <= set(served)
    nb = http.get(f"{base}/api/contents/notebooks/{on_disk[0]}", params={"content": 1}, timeout=10).json()
    assert nb["type"] == "notebook" and nb["content"]["nbformat"] == 4
    assert nb["content"]["metadata"]["kernelspec"]["name"] == "python3"
    assert any("parameters" in c["metadata"].get("tags", []) for c in nb["content"]["cells"])


def test_lab_page_opens_notebooks_with_the_widgets_extension(lab):
    base, http, _ = lab
    home = http.get(f"{base}/", allow_redirects=False, timeout=10)
    assert urlsplit(home.headers["Location"]).path == "/lab/tree/notebooks"  # the browser's folder
    page = http.get(f"{base}/lab/tree/notebooks", timeout=30)
    assert page.ok, page.status_code
    data = page.text.split('id="jupyter-config-data"', 1)[1].split(">", 1)[1].split("</script>", 1)[0]
    extensions = [e["name"] for e in json.loads(data)["federated_extensions"]]
    assert WIDGETS_EXTENSION in extensions
    assert http.get(f"{base}/api/me", timeout=10).ok  # the token is what authenticates


def _execute(ws, code: str, timeout: float = 60) -> list[dict]:
    """Run ``code`` on the kernel behind websocket ``ws``; its iopub messages until it is idle."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                   "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False}}))
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id or msg["channel"] != "iopub":
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out
    raise TimeoutError(f"no reply to {code!r} within {timeout} s; got {out}")


def test_kernel_runs_bmglib_and_tqdm_renders_as_a_widget(lab):
    base, http, token = lab
    kernel = http.post(f"{base}/api/kernels", json={"name": "python3"}, timeout=30).json()
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{base.rsplit(':', 1)[1]}/api/kernels/{kernel['id']}/channels?token={token}",
        timeout=60)
    try:
        msgs = _execute(ws, "import sys, bmglib\nprint(sys.prefix, bmglib.__file__)\n"
                            "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)): pass")
    finally:
        ws.close()
        http.delete(f"{base}/api/kernels/{kernel['id']}", timeout=30)
    errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
    assert not errors, errors
    printed = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
    prefix, module = printed.split()[:2]
    assert os.path.samefile(prefix, sys.prefix)  # the project's venv, not another Python
    assert module.startswith(str(paths.REPO_ROOT / "bmglib"))
    shown = [m["content"]["data"] for m in msgs if m["msg_type"] == "display_data"]
    assert any(WIDGET_MIME in d for d in shown), shown  # a widget, not "IProgress not found"
