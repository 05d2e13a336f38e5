"""End to end in headless Chromium: a reader rates ten images with clicks and keys, reloads and
the server restarts in the middle, and the export holds exactly those answers.

Needs the Debian ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them); it
fails without them, unless ``BMG_SKIP_BROWSER=1``. Screenshots of the rating and admin pages at
1280×800 and 390×844 go to ``$BMG_SCREENSHOT_DIR`` (default: the test's temporary folder).
"""

from __future__ import annotations

import io
import os
import shutil
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from _readerstudy import LiveServer, answers_equal, make_pool

from bmglib.readerstudy import design, store
from bmglib.readerstudy.app import create_app

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,800")


def _binaries() -> tuple[str, str]:
    if os.environ.get("BMG_SKIP_BROWSER") == "1":
        pytest.skip("BMG_SKIP_BROWSER=1")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the browser test needs chromium and chromedriver (apt-get install chromium "
                    "chromium-driver; .ci/run does it); set BMG_SKIP_BROWSER=1 to skip it")
    return chromium, driver


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    drv = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture
def live(tmp_path):
    pool = make_pool(tmp_path / "pool", n_per_cell=1)
    study = design.create_study(tmp_path / "study", pool, design.DesignConfig(n_per_cell=1))
    st = store.Store(study)
    reader, token = st.add_reader("Dermatologist A")
    server = LiveServer(lambda: create_app(study.dir)).start()
    yield {"study": study, "server": server, "token": token, "admin": st.tokens()["admin"], "order": reader.order}
    server.stop()


def _wait(drv, condition, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(lambda d: condition(d))


def _text(drv, element_id):
    return drv.find_element("id", element_id).text


def _current_id(drv) -> str:
    return drv.find_element("id", "image").get_attribute("src").rsplit("/", 1)[1]


def _on_image(drv, k: int, n: int = 48):
    """Wait until image k (1-based) is shown and loaded."""
    _wait(drv, lambda d: _text(d, "counter") == f"Image {k} of {n}"
          and d.execute_script("const i = document.getElementById('image'); return i.complete && i.naturalWidth > 0"))


def _click(drv, q, value):
    drv.find_element("css selector", f"#c-{q} button[data-value='{value}']").click()


def _keys(drv, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(drv)
    for k in keys:
        chain.send_keys(k)
    chain.perform()


def _shot(drv, folder: Path, name: str, width: int, height: int) -> Path:
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    drv.execute_script("window.scrollTo(0, 0)")
    path = folder / f"{name}_{width}x{height}.png"
    drv.save_screenshot(str(path))
    return path


def _rate(drv, k, answer, by_keys):
    """Answer the shown image with clicks or keys, then save and wait for the next one."""
    from selenium.webdriver.common.keys import Keys

    if by_keys:
        keys = [str(answer["realism"]), "s" if answer["judgement"] == "synthetic" else "r", str(answer["confidence"])]
        if answer["lesion"] is not None:
            keys += [str(1 + list(design.LESION_CHOICES).index(answer["lesion"]))]  # lesion is highlighted next
        if answer["fst"] is not None:
            keys += [Keys.ARROW_DOWN, str(answer["fst"])]
        _keys(drv, *keys, Keys.ENTER)
    else:
        _click(drv, "realism", answer["realism"])
        _click(drv, "judgement", answer["judgement"])
        _click(drv, "confidence", answer["confidence"])
        if answer["lesion"] is not None:
            _click(drv, "lesion", answer["lesion"])
        if answer["fst"] is not None:
            _click(drv, "fst", answer["fst"])
        drv.find_element("id", "next").click()


def test_a_reader_rates_ten_images_reloads_and_resumes(browser, live, tmp_path):
    from selenium.webdriver.common.keys import Keys

    drv, server = browser, live["server"]
    shots = Path(os.environ.get("BMG_SCREENSHOT_DIR", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    url = f"{server.base}/r/{live['token']}"
    drv.get(url)
    _wait(drv, lambda d: d.find_element("id", "intro").is_displayed())
    _shot(drv, shots, "reader_intro", 1280, 800)
    drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    _keys(drv, Keys.ENTER)  # Enter starts
    _on_image(drv, 1)

    lesions = [*design.LESION_CHOICES, None]
    given = {}
    for k in range(1, 11):
        answer = {"realism": 1 + (k * 2) % 5, "judgement": "synthetic" if k % 3 else "real",
                  "confidence": 1 + k % 5, "lesion": lesions[k % 5], "fst": None if k % 4 == 0 else 1 + k % 6}
        assert _current_id(drv) == live["order"][k - 1]
        if k == 5:  # half an answer, then a reload: nothing of it was saved, the page resumes here
            _click(drv, "realism", 2)
            drv.refresh()
            _on_image(drv, 5)
            assert _text(drv, "progress-text") == "4 of 48 rated"
            assert drv.find_elements("css selector", "#c-realism button[aria-pressed='true']") == []
        if k == 8:  # the server restarts (same port), the reader reloads
            server.stop()
            server.start()
            drv.refresh()
            _on_image(drv, 8)
            assert _text(drv, "progress-text") == "7 of 48 rated"
        if k == 3:  # screenshots of a half-answered image
            _click(drv, "realism", 4)
            _click(drv, "judgement", "real")
            _shot(drv, shots, "reader_rating", 1280, 800)
            _shot(drv, shots, "reader_rating", 390, 844)
            drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            drv.refresh()
            _on_image(drv, 3)
        _rate(drv, k, answer, by_keys=k % 2 == 0)
        given[("R01", live["order"][k - 1])] = answer
        _on_image(drv, k + 1)
        assert _text(drv, "progress-text") == f"{k} of 48 rated"

    # back with the arrow key: the saved answer is shown again
    _keys(drv, Keys.ARROW_LEFT)
    _on_image(drv, 10)
    pressed = drv.find_element("css selector", "#c-realism button[aria-pressed='true']").text
    assert pressed == str(given[("R01", live["order"][9])]["realism"])

    drv.get(f"{server.base}/a/{live['admin']}")
    _wait(drv, lambda d: "10 / 48" in d.find_element("id", "readers").text)
    _shot(drv, shots, "admin", 1280, 800)
    _shot(drv, shots, "admin", 390, 844)

    with urllib.request.urlopen(f"{server.base}/api/a/{live['admin']}/export.csv", timeout=20) as r:
        table = pd.read_csv(io.StringIO(r.read().decode()), dtype={"image_id": str})
    assert answers_equal(table, given)
    assert sorted(table["position"]) == list(range(1, 11))
    assert (table["seconds"] > 0).all() and (table["revisions"] == 1).all()
    assert {p.name for p in shots.iterdir()} >= {"reader_rating_1280x800.png", "reader_rating_390x844.png",
                                                 "admin_1280x800.png", "admin_390x844.png"}
