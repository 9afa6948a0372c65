"""The dashboard in a real headless Chromium (Debian's), against a running ``jobtrail serve``.

The page is loaded once; while events flow, its numbers must change in place. Chromium and
chromedriver come from Debian (``apt-get install -y chromium chromium-driver``); Selenium is told
where they are, so Selenium Manager never downloads anything. Without them the test fails.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from app.client import JobtrailClient
from tests import servers
from tests.e2e.harness import (
    ROOT,
    Tracker,
    new_job_id,
    publish,
    status,
    tracker_env,
    wait_for,
    wait_status,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT_LINE = "apt-get install -y chromium chromium-driver"
SCREENSHOT = ROOT / "test-artifacts" / "dashboard.png"
"""Kept for a look; `make screenshots` copies it to docs/dashboard.png on purpose."""
READER = "browser-reader-token-0123456789"
WAIT = 60
NOT_WIRED = "the API does not serve the dashboard: create_api must call install_dashboard"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"the dashboard browser test needs Debian's Chromium: {', '.join(missing)} "
            f"not found; install it with `{APT_LINE}`"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1366, 1400)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served(
    mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> Iterator[tuple[dict[str, str], str]]:
    """A ``jobtrail serve`` process with its API on a fixed free port and a read token."""
    env = tracker_env(rabbit_url, mongo_url, pg_url, tmp_path)
    port = servers.free_port()
    env |= {
        "JOBTRAIL_HTTP_PORT": str(port),
        "JOBTRAIL_RABBIT_API_URL": servers.RABBIT_API,
        "JOBTRAIL_READ_TOKEN": READER,
    }
    tracker = Tracker(env, tmp_path)
    tracker.start()
    try:
        yield env, f"http://127.0.0.1:{port}"
    finally:
        assert tracker.stop() == 0, tracker.log_text()[-3000:]


class Traffic(threading.Thread):
    """Submits jobs and reports them: most complete, one in six fails, one in ten is reported
    twice (an anomaly); until stopped."""

    def __init__(self, rabbit_url: str) -> None:
        super().__init__(daemon=True)
        self.rabbit_url = rabbit_url
        self.halt = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._flow())
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    async def _flow(self) -> None:
        async with (
            JobtrailClient(self.rabbit_url, "cloud") as cloud,
            JobtrailClient(self.rabbit_url, "node-7") as node,
        ):
            while not self.halt.is_set():
                self.sent += 1
                job, pool = new_job_id("live"), ("gpu-a", "gpu-b", "cpu")[self.sent % 3]
                await cloud.submit(
                    job,
                    job_type="sync",
                    model="llama-3-8b",
                    priority="bulk",
                    tenant="acme",
                    pool=pool,
                )
                await node.reserved(job, 1, "node-7")
                if self.sent % 6 == 0:
                    await node.failed(job, 1, "node-7", "oom", "CUDA out of memory")
                else:
                    await node.completed(job, 1, "node-7", duration_ms=120)
                if self.sent % 10 == 5:  # a second report of a finished attempt: an anomaly
                    await node.completed(job, 1, "node-7", duration_ms=120)
                await asyncio.sleep(0.1)


def dead_letter(env: dict[str, str], message: str) -> str:
    job = new_job_id("dead")
    rabbit = env["JOBTRAIL_RABBIT_URL"]
    publish(
        rabbit,
        lambda c: c.submit(
            job, job_type="batch", model="whisper", priority="bulk", tenant="globex", pool="cpu"
        ),
    )
    wait_for(lambda: status(env, job), "the submission")
    publish(
        rabbit,
        lambda c: c.reserved(job, 1, "node-3"),
        lambda c: c.failed(job, 1, "node-3", "bad_input", message, retryable=False),
    )
    wait_status(env, job, "dead_lettered")
    return job


# The page re-renders its tables and counters on every poll, so an element found by one WebDriver
# call can be gone by the next (StaleElementReferenceException). Each read below is one script run
# in the page, between two renders, and returns plain values.


def polls(driver: WebDriver) -> int:
    value = driver.execute_script("return document.body.dataset.polls || '0'")
    return int(value)


def completed(driver: WebDriver) -> int:
    text = driver.execute_script(
        "const e = document.getElementById('count-completed'); return e ? e.innerText : ''"
    )
    return int(text) if text.isdigit() else -1


ROWS = """
return Array.from(document.querySelectorAll('#' + arguments[0] + ' tr'), row =>
    Array.from(row.querySelectorAll('td'), cell => cell.innerText.trim()));
"""


def row_of(driver: WebDriver, tbody: str, job: str) -> list[str]:
    for cells in driver.execute_script(ROWS, tbody):
        if cells and cells[0] == job:
            return list(cells)
    return []


def test_the_dashboard_updates_live_in_a_real_browser(
    browser: WebDriver, served: tuple[dict[str, str], str]
) -> None:
    env, base = served
    dead = dead_letter(env, "the prompt is empty")
    wait = WebDriverWait(browser, WAIT)
    page = httpx.get(f"{base}/dashboard", timeout=30)
    assert page.status_code == 200, f"{NOT_WIRED} (GET /dashboard: {page.status_code})"
    browser.get(f"{base}/")  # the front door leads to the dashboard
    assert browser.current_url == f"{base}/dashboard"

    # Reads need the token: the page asks for it once and keeps it for the tab.
    wait.until(lambda d: d.find_element(By.ID, "auth").is_displayed())
    browser.find_element(By.ID, "token").send_keys(READER)
    browser.find_element(By.CSS_SELECTOR, "#auth button").click()
    wait.until(lambda d: polls(d) >= 1)
    assert not browser.find_element(By.ID, "auth").is_displayed()
    assert browser.find_element(By.ID, "health").text == "ok"

    traffic = Traffic(env["JOBTRAIL_RABBIT_URL"])
    traffic.start()
    try:
        first_poll, first_count = polls(browser), completed(browser)
        wait.until(lambda d: polls(d) > first_poll and completed(d) > first_count)
        later_poll, later_count = polls(browser), completed(browser)
        wait.until(lambda d: polls(d) > later_poll and completed(d) > later_count)
        assert traffic.error is None, traffic.error

        wait.until(lambda d: row_of(d, "dead-rows", dead))
        cells = row_of(browser, "dead-rows", dead)
        assert cells[1:5] == ["non_retryable", "bad_input", "the prompt is empty", "cpu"]
        wait.until(lambda d: "jobtrail.work.gpu-a.sync" in d.find_element(By.ID, "queue-rows").text)
        assert browser.find_element(By.ID, "queues-unavailable").text == ""
        wait.until(lambda d: row_of(d, "latency-rows", "gpu-a"))  # the traffic's pool
        assert browser.find_element(By.ID, "starved").text == "No tenant starved."
        outcomes = browser.execute_script(  # the chart is a new <svg> at every poll
            "return Array.from(document.querySelectorAll('#throughput rect[data-outcome]'),"
            " bar => bar.dataset.outcome)"
        )
        assert set(outcomes) >= {"completed", "failed"}
        assert browser.find_element(By.ID, "failure-rate").text.endswith("%")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))
    finally:
        traffic.halt.set()
        traffic.join(timeout=30)
    assert traffic.error is None, traffic.error

    # Producer text is shown as text, never run as markup.
    hostile = dead_letter(env, '<b id="injected">bold?</b><script>window.hit=1</script>')
    wait.until(lambda d: row_of(d, "dead-rows", hostile))
    assert row_of(browser, "dead-rows", hostile)[3].startswith('<b id="injected">')
    assert browser.find_elements(By.ID, "injected") == []
    assert browser.execute_script("return window.hit === undefined") is True
    problems = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]
    ]
    assert problems == []
