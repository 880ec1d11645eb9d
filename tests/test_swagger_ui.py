"""Swagger UI in a real browser: headless Chromium renders the operations from our own files,
and "Try it out" on users/create gets an envelope back from the server.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); skipped without them.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tests.helpers.openapi import documented_operations
from tests.helpers.process import env, serving_url

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="headless Chromium is not installed (apt-get install chromium chromium-driver)")


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    """A `python -m vpiska` of its own: the browser's calls block this (synchronous) test.

    On a port the kernel picks, read from its "serving" log line (as tests/helpers/process.py's
    `vpiska_process` does); a thread reads its output all along, so a full pipe never stops it.
    """
    process = subprocess.Popen([sys.executable, "-m", "vpiska"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=env(tmp_path, SERVER_PORT="0"))
    urls: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                url = serving_url(line)
                if url is not None:
                    urls.put(url)
        urls.put(None)  # the process has gone

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        url = urls.get(timeout=30)
        if url is None:
            raise AssertionError(f"the server exited ({process.wait()}) before serving")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        reader.join(timeout=20)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,2000",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_operations_render_and_try_it_out_gets_an_envelope(server_url: str,
                                                           browser: WebDriver) -> None:
    browser.get(f"{server_url}/swagger/index.html")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock"))
               == documented_operations())

    operation = operation_block(browser, "post", "/api/v1/users/create")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda _: operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    operation.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    wait.until(lambda _: operation.find_elements(By.CSS_SELECTOR, ".execute"))
    operation.find_element(By.CSS_SELECTOR, ".execute").click()
    body = wait.until(lambda _: operation.find_elements(
        By.CSS_SELECTOR, ".live-responses-table .response-col_description pre"))[0]

    envelope = json.loads(body.text)
    assert list(envelope) == ["isSuccess", "errors", "result"]
    assert envelope["isSuccess"] is True, envelope  # the example body signs "ann" up
    assert envelope["result"]["name"] == "ann"


def operation_block(browser: WebDriver, method: str, path: str) -> WebElement:
    for block in browser.find_elements(By.CSS_SELECTOR, f".opblock-{method}"):
        if block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text == path:
            return block
    raise AssertionError(f"{method.upper()} {path} is not on the page")
