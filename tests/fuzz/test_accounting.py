"""The fuzz run's own accounting: a repeated quarantine copy passes only when the tracker explains it."""

from __future__ import annotations

import json
from collections import Counter

from tests.fuzz.conftest import (
    Outcomes,
    Quarantine,
    _repeats_explained,
    digest,
    unconfirmed_quarantines,
)

BODY = b'{"type": "submitted", '


def _given_back(body: bytes) -> str:
    return json.dumps({"msg": "not acknowledged, given back to the broker: quarantine failed: "
                       "TimeoutError()", "body_sha256": digest(body)})  # fmt: skip


def _left(ids: list[str | None], logged: int) -> tuple[list[str], int]:
    quarantine = Quarantine(message_ids={digest(BODY): [*ids]})
    parked = {digest(BODY): ["invalid_json: x"] * (len(ids) - 1)}  # the first copy was matched
    out = Outcomes()
    unconfirmed = unconfirmed_quarantines("\n".join([_given_back(BODY)] * logged + ["{}"]))
    _repeats_explained(out, parked, quarantine, {digest(BODY)}, unconfirmed)
    return parked[digest(BODY)], out.counts["requarantined_after_an_unconfirmed_publish"]


def test_a_repeat_the_tracker_logged_with_the_body_id_is_explained() -> None:
    assert _left([digest(BODY)] * 2, logged=1) == ([], 1)


def test_a_repeat_nobody_logged_stays_a_problem() -> None:
    assert _left([digest(BODY)] * 2, logged=0) == (["invalid_json: x"], 0)


def test_more_repeats_than_logged_leave_the_rest() -> None:
    assert _left([digest(BODY)] * 3, logged=1) == (["invalid_json: x"], 1)


def test_a_repeat_under_another_message_id_stays_a_problem() -> None:
    assert _left([digest(BODY), None], logged=1) == (["invalid_json: x"], 0)


def test_only_quarantine_give_backs_count() -> None:
    rekey = json.dumps({"msg": "not acknowledged, given back to the broker: re-publishing an "
                        "event for j failed", "body_sha256": digest(BODY)})  # fmt: skip
    assert unconfirmed_quarantines(rekey) == Counter()
