"""The dashboard's job pages on in-memory stores: render, 404/422, tokens, escaping, paging.

The tracker records a real history (retry after its cooldown, reroute, dead letter, a late
report that is an anomaly) on the in-memory log and projections; the pages are requested
through the API app as the browser would. The browser walk-through is in
tests/e2e/test_dashboard_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import unescape

import httpx
import pytest

from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_queries import InMemoryJobQueries
from app.adapters.memory_store import InMemoryProjectionStore
from app.bootstrap import Readers
from app.domain.events import ExpiryReason, JobEvent
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Tokens
from app.entrypoints.dashboard_page import job_pages_script, job_pages_style
from app.entrypoints.dashboard_views import reason
from app.services.tracking import Tracker
from app.settings import Settings
from tests.unit.factories import (
    T0,
    cancelled,
    completed,
    expired,
    failed,
    heartbeat,
    redriven,
    reserved,
    retried,
    routed,
    small_policy,
    submitted,
)

READER = "unit-reader-token-0123456789"
OPERATOR = "unit-operator-token-0123456789"
HOSTILE = '<img src=x onerror=alert(1)><script>alert("x")</script>'
AUTH = {"Authorization": f"Bearer {READER}"}


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at


class Actions:
    """The operator actions the API published (the browser test publishes to RabbitMQ)."""

    def __init__(self) -> None:
        self.published: list[JobEvent] = []

    async def publish(self, event: JobEvent) -> None:
        self.published.append(event)


@dataclass
class Fleet:
    tracker: Tracker
    store: InMemoryProjectionStore
    clock: Clock
    http: httpx.AsyncClient
    actions: Actions

    def at(self, seconds: float) -> datetime:
        return T0 + timedelta(seconds=seconds)

    async def fire_timers(self) -> None:
        """Move the clock to the job's next deadline and let the tracker decide."""
        row = await self.store.get_job("doomed")
        assert row is not None and row.next_deadline_at is not None
        self.clock.at = row.next_deadline_at
        await self.tracker.fire_due_timers()


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    log, store, clock = InMemoryEventLog(), InMemoryProjectionStore(), Clock()
    policy = small_policy()
    tracker = Tracker(log, store, policy, clock)
    actions = Actions()
    api = create_api(
        Settings(),
        Readers(log, store, policy),
        tokens=Tokens.of(read=READER, operator=OPERATOR),
        queries=InMemoryJobQueries(store),
        clock=clock,
        actions=actions,
    )
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://jobtrail") as http:
        yield Fleet(tracker, store, clock, http, actions)


async def doomed_history(fleet: Fleet) -> None:
    """Fails on gpu-a, is retried after its cooldown, fails again, is rerouted to gpu-b, fails
    there with a non-retryable error (dead letter), then a late completion (an anomaly)."""
    at = fleet.at
    sub = submitted("doomed", pool="gpu-a", queue="jobtrail.work.gpu-a.sync", tenant=HOSTILE)
    await fleet.tracker.record(
        [sub, reserved("doomed", at=at(1)), failed("doomed", at=at(3), error_message=HOSTILE)]
    )
    for attempt, code in ((2, "oom"), (3, "invalid_input")):
        await fleet.fire_timers()
        start = (fleet.clock.at - T0).total_seconds()
        await fleet.tracker.record(
            [
                reserved("doomed", at=at(start + 2), attempt=attempt, node_id="node-b"),
                failed(
                    "doomed",
                    at=at(start + 2.5),
                    attempt=attempt,
                    node_id="node-b",
                    error_code=code,
                    retryable=code == "oom",
                ),
            ]
        )
    await fleet.tracker.record([completed("doomed", at=at(60), attempt=3)])


def cells(html: str, tbody: str) -> list[list[str]]:
    """The text of each row of a table body (tags stripped, entities decoded)."""
    body = html.split(f'<tbody id="{tbody}">', 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    return [
        [
            unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)
        ]
        for r in rows
    ]


async def test_the_job_page_shows_header_attempts_timeline_anomalies_and_chain(
    fleet: Fleet,
) -> None:
    await doomed_history(fleet)
    page = await fleet.http.get("/dashboard/jobs/doomed", headers=AUTH)
    assert page.status_code == 200
    html = page.text
    assert '<span id="job-status" class="status dead_lettered">dead_lettered</span>' in html
    assert (
        "<dd>3 of 4</dd>" in html and "<dd>gpu-b</dd>" in html and "<dd>non_retryable</dd>" in html
    )
    assert "<dt>submitted (UTC)</dt><dd>2024-01-01 12:00:00.000</dd>" in html
    [ended] = re.findall(r"<dt>ended \(UTC\)</dt><dd>([^<]+)</dd>", html)
    [dead] = [row[1] for row in cells(html, "timeline-rows") if row[3] == "dead_lettered"]
    assert ended == dead, "when it was dead-lettered, not when the late report came"
    attempts = cells(html, "attempt-rows")
    assert attempts[0] == ["1", "gpu-a", "node-a", "1.000 s", "2.000 s", "failed", "oom", HOSTILE]
    assert [a[:3] for a in attempts[1:]] == [["2", "gpu-a", "node-b"], ["3", "gpu-b", "node-b"]]
    assert [a[3:7] for a in attempts[1:]] == [
        ["2.000 s", "0.500 s", "failed", "oom"],
        ["2.000 s", "0.500 s", "failed", "invalid_input"],
    ]
    timeline = cells(html, "timeline-rows")
    reasons = {row[3]: row[7] for row in timeline}
    assert re.fullmatch(
        r"retry as attempt 2 on pool gpu-a after a cooldown of \d+\.\d{3} s", reasons["retried"]
    )
    assert reasons["rerouted"] == "reroute gpu-a -> gpu-b for attempt 3"
    assert reasons["dead_lettered"].startswith("dead-lettered: non_retryable")
    assert [row[0] for row in timeline] == [str(seq) for seq in range(1, 12)]
    [anomaly] = cells(html, "anomaly-rows")
    assert anomaly[:3] == ["11", "completed", "after_terminal"]
    assert "intact</span>: 11 entries re-hashed" in html


async def test_hostile_job_fields_come_out_as_text(fleet: Fleet) -> None:
    await doomed_history(fleet)
    html = (await fleet.http.get("/dashboard/jobs/doomed", headers=AUTH)).text
    assert HOSTILE not in html and "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(&#34;x&#34;)" in html
    assert html.count("<script>") == 1, "only the page's own script"
    assert html.split("<script>", 1)[1].split("</script>", 1)[0] == job_pages_script()
    assert html.split("<style>", 1)[1].split("</style>", 1)[0] == job_pages_style()
    listed = (
        await fleet.http.get("/dashboard/jobs", params={"tenant": HOSTILE}, headers=AUTH)
    ).text
    assert HOSTILE not in listed and '<a href="../dashboard/jobs/doomed">doomed</a>' in listed


async def test_pages_need_the_read_token_and_say_so_without_data(fleet: Fleet) -> None:
    await doomed_history(fleet)
    for path in ("/dashboard/jobs/doomed", "/dashboard/jobs", "/dashboard/jobs/nope"):
        page = await fleet.http.get(path)
        assert page.status_code == 401, path
        assert 'data-auth="needed"' in page.text and "Give a read token above" in page.text
        assert "gpu-" not in page.text and "non_retryable" not in page.text, "no data"
        wrong = await fleet.http.get(path, headers={"Authorization": "Bearer " + "x" * 20})
        assert wrong.status_code == 401
    operator = await fleet.http.get(
        "/dashboard/jobs/doomed", headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert operator.status_code == 200
    policy = operator.headers["content-security-policy"]
    assert "form-action 'self'" in policy and "default-src 'none'" in policy


async def test_an_unknown_job_is_a_404_page_and_a_bad_id_a_422_page(fleet: Fleet) -> None:
    missing = await fleet.http.get("/dashboard/jobs/no-such-job", headers=AUTH)
    assert missing.status_code == 404 and "no job &#39;no-such-job&#39; is known" in missing.text
    odd = await fleet.http.get("/dashboard/jobs/no-such-job?as_of=<i>now</i>", headers=AUTH)
    assert odd.status_code == 422 and "unknown query parameter &#39;as_of&#39;" in odd.text
    bad = await fleet.http.get("/dashboard/jobs/bad%20id%3Cb%3E", headers=AUTH)
    assert bad.status_code == 422
    assert "&#39;bad id&lt;b&gt;&#39; is not a job id" in bad.text and "<b>" not in bad.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"status": "sleeping"}, "invalid status: Input should be"),
        ({"colour": "red"}, "invalid colour: not a filter of this page"),
        ({"limit": "0"}, "invalid limit: Input should be greater than or equal to 1"),
        ({"updated_since": "yesterday"}, "invalid updated_since:"),
        ({"cursor": "forged"}, "cursor is not one this API handed out"),
        (
            {"updated_since": "2024-01-02T00:00:00Z", "updated_until": "2024-01-01T00:00:00Z"},
            "updated_since must be before updated_until",
        ),
    ],
)
async def test_a_bad_filter_is_a_422_page_saying_what_was_wrong(
    fleet: Fleet, query: dict[str, str], message: str
) -> None:
    page = await fleet.http.get("/dashboard/jobs", params=query, headers=AUTH)
    assert page.status_code == 422
    problem = unescape(
        page.text.split('<p class="problem" id="problem">', 1)[1].split("</p>", 1)[0]
    )
    assert message in problem
    assert 'id="job-rows"' not in page.text


async def test_search_filters_and_pages_with_the_api_cursor(fleet: Fleet) -> None:
    jobs = [f"job-{n:02d}" for n in range(7)]
    for n, job in enumerate(jobs):
        fleet.clock.at = fleet.at(n)
        pool = "gpu-a" if n % 2 else "cpu"
        await fleet.tracker.record([submitted(job, at=fleet.at(n), pool=pool, queue=f"q.{pool}")])
    seen: list[str] = []
    link = "?pool=cpu&limit=2&status=queued"
    while link:
        page = await fleet.http.get("/dashboard/jobs" + link, headers=AUTH)
        assert page.status_code == 200
        first = '<a id="first-page" href="?pool=cpu&amp;limit=2&amp;status=queued">'
        assert (first in page.text) == ("cursor=" in link)
        seen += [row[0] for row in cells(page.text, "job-rows")]
        found = re.search(r'<a id="next-page" href="([^"]+)">', page.text)
        link = unescape(found.group(1)) if found else ""
        if found:
            assert 'value="cpu"' in page.text and "<option selected>queued</option>" in page.text
            assert "cursor=" in link and "pool=cpu" in link
    assert seen == ["job-06", "job-04", "job-02", "job-00"]
    none = await fleet.http.get("/dashboard/jobs", params={"tenant": "nobody"}, headers=AUTH)
    assert cells(none.text, "job-rows") == [["no job matches"]]


async def test_operator_controls_are_in_the_page_and_redrive_one_job_records_the_actor(
    fleet: Fleet,
) -> None:
    await doomed_history(fleet)
    html = (await fleet.http.get("/dashboard/jobs/doomed", headers=AUTH)).text
    assert 'data-path="../../jobs/doomed/redrive"' in html and "data-operator hidden" in html
    body = {"actor": "ops@example"}
    refused = await fleet.http.post("/jobs/doomed/redrive", json=body, headers=AUTH)
    assert refused.status_code == 403
    done = await fleet.http.post(
        "/jobs/doomed/redrive", json=body, headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert done.status_code == 200, done.text
    [event] = fleet.actions.published
    assert (event.type, event.actor, event.attempt, done.json()["attempt"]) == (
        "redriven",
        "ops@example",
        4,
        4,
    )
    await fleet.tracker.record(fleet.actions.published)
    again = await fleet.http.post(
        "/jobs/doomed/redrive", json=body, headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert again.status_code == 409 and "not dead_lettered" in again.json()["error"]
    queued = (await fleet.http.get("/dashboard/jobs/doomed", headers=AUTH)).text
    assert 'class="status queued">queued<' in queued and 'id="cancel-job"' in queued
    assert "redriven by ops@example to pool gpu-b" in queued


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (
            expired(reason=ExpiryReason.LEASE, detail="no heartbeat"),
            "the lease ran out (no heartbeat)",
        ),
        (expired(reason=ExpiryReason.TTL), "the job's TTL ran out"),
        (heartbeat(), "heartbeat from node node-a: lease extended"),
        (cancelled(actor="bob", reason="customer asked"), "cancelled by bob (customer asked)"),
        (redriven(actor="ann", pool="gpu-b"), "redriven by ann to pool gpu-b"),
        (reserved(lease_seconds=90), "reserved by node node-a, lease 90 s"),
        (completed(duration_ms=120), "completed on node node-a in 120 ms"),
        (
            routed(pool="gpu-b", cooldown_seconds=2.5),
            "routing plugin least-failing 0.1.0: go to pool gpu-b after a cooldown of 2.500 s",
        ),
        (
            routed(cooldown_seconds=10),
            "routing plugin least-failing 0.1.0: stay on the pool after a cooldown of 10.000 s",
        ),
        (
            routed(cooldown_seconds=10, fallback="raised RuntimeError: boom"),
            "routing plugin least-failing 0.1.0 raised RuntimeError: boom: the policy's rule decides",
        ),
    ],
)
def test_each_event_says_why_in_words(event: JobEvent, words: str) -> None:
    assert reason(event) == words


def test_a_retry_names_the_cooldown_it_waited() -> None:
    retry = retried(at=T0 + timedelta(seconds=7.5), pool="gpu-a")
    assert reason(retry, T0) == "retry as attempt 2 on pool gpu-a after a cooldown of 7.500 s"
    assert reason(retry) == "retry as attempt 2 on pool gpu-a"
