"""The dashboard in a real headless Chromium (Debian's), against a running ``jobtrail serve``.

The page is loaded once; while events flow, its numbers must change in place. Then an operator
walks from a dead letter on the summary to its job page, reads its timeline and redrives it,
and redrives another by filter from the search page after a dry run. Chromium and
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
JOB_SCREENSHOT = ROOT / "test-artifacts" / "dashboard-job.png"
JOBS_SCREENSHOT = ROOT / "test-artifacts" / "dashboard-jobs.png"
READER = "browser-reader-token-0123456789"
OPERATOR = "browser-operator-token-0123456789"
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
    """A ``jobtrail serve`` process with its API on a fixed free port, a read and an operator
    token."""
    env = tracker_env(rabbit_url, mongo_url, pg_url, tmp_path)
    port = servers.free_port()
    env |= {
        "JOBTRAIL_HTTP_PORT": str(port),
        "JOBTRAIL_RABBIT_API_URL": servers.RABBIT_API,
        "JOBTRAIL_READ_TOKEN": READER,
        "JOBTRAIL_OPERATOR_TOKEN": OPERATOR,
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


def text_of(driver: WebDriver, element_id: str) -> str:
    script = "const e = document.getElementById(arguments[0]); return e ? e.innerText : ''"
    return str(driver.execute_script(script, element_id))


def give_read_token(driver: WebDriver, wait: WebDriverWait[WebDriver]) -> None:
    wait.until(lambda d: d.find_element(By.ID, "auth").is_displayed())
    driver.find_element(By.ID, "token").send_keys(READER)
    driver.find_element(By.CSS_SELECTOR, "#auth button").click()


def no_page_errors(driver: WebDriver) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]
    ]


def test_an_operator_opens_a_dead_letter_reads_its_timeline_and_redrives_it(
    browser: WebDriver, served: tuple[dict[str, str], str]
) -> None:
    env, base = served
    dead = dead_letter(env, "the prompt is empty")
    wait = WebDriverWait(browser, WAIT)
    browser.get(f"{base}/dashboard")
    give_read_token(browser, wait)
    wait.until(lambda d: row_of(d, "dead-rows", dead))
    # One script run: the table is rendered anew at every poll.
    browser.execute_script(
        "document.querySelector('#dead-rows a[href=\"dashboard/jobs/' + arguments[0] + '\"]')"
        ".click()",
        dead,
    )
    wait.until(lambda d: d.current_url == f"{base}/dashboard/jobs/{dead}")
    # The page came without data (reads need the token); it loads itself again with the tab's.
    wait.until(lambda d: text_of(d, "job-status") == "dead_lettered")
    timeline = browser.execute_script(ROWS, "timeline-rows")
    assert [row[3] for row in timeline] == ["submitted", "reserved", "failed", "dead_lettered"]
    assert "bad_input: the prompt is empty" in timeline[2][7]
    assert timeline[3][7].startswith("dead-lettered: non_retryable")
    attempts = browser.execute_script(ROWS, "attempt-rows")
    assert attempts[0][:3] == ["1", "cpu", "node-3"] and attempts[0][5:] == [
        "failed",
        "bad_input",
        "the prompt is empty",
    ]
    assert "intact" in text_of(browser, "chain")
    assert not browser.find_element(By.ID, "redrive-job").is_displayed(), "no token, no action"
    JOB_SCREENSHOT.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(JOB_SCREENSHOT))

    browser.find_element(By.ID, "operator-token").send_keys(OPERATOR)
    browser.find_element(By.ID, "operator-actor").send_keys("ann@ops")
    browser.find_element(By.CSS_SELECTOR, "#operator-key button[type=submit]").click()
    wait.until(lambda d: d.find_element(By.ID, "redrive-job").is_displayed())
    browser.find_element(By.ID, "redrive-job").click()
    wait.until(lambda d: text_of(d, "job-status") == "queued")
    last = browser.execute_script(ROWS, "timeline-rows")[-1]
    assert (last[3], last[4], last[6]) == ("redriven", "2", "ann@ops")
    row = status(env, dead)
    assert row is not None and (row["status"], row["attempt"]) == ("queued", 2)

    # From the search page: select dead letters by filter, preview, then redrive.
    other = dead_letter(env, "no such model")
    browser.get(f"{base}/dashboard/jobs?status=dead_lettered&pool=cpu")
    wait.until(lambda d: row_of(d, "job-rows", other))
    assert not row_of(browser, "job-rows", dead), "the first one is queued again"
    wait.until(lambda d: d.find_element(By.ID, "redrive-preview").is_displayed())
    browser.find_element(By.ID, "redrive-preview").click()
    wait.until(lambda d: other in text_of(d, "preview-ids"))
    assert text_of(browser, "operator-result") == "1 dead letter(s) would be redriven:"
    unsent = status(env, other)
    assert unsent is not None and unsent["status"] == "dead_lettered", "a preview sends nothing"
    assert browser.save_screenshot(str(JOBS_SCREENSHOT))
    browser.find_element(By.ID, "redrive-run").click()
    wait.until(lambda d: "redriven by ann@ops" in text_of(d, "operator-result"))
    wait_status(env, other, "queued")
    assert no_page_errors(browser) == []
