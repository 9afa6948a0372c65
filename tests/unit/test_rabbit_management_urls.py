"""Where the dashboard looks for RabbitMQ's management API, and with which credentials."""

from __future__ import annotations

import pytest

from app.adapters.rabbit_management import RabbitManagement


@pytest.mark.parametrize(
    ("amqp", "api", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", None, ("http://127.0.0.1:15672/api", "/")),
        ("amqp://u:p@rabbit.internal/jobs", None, ("http://rabbit.internal:15672/api", "jobs")),
        ("amqp://u:p@h:5672/a%2Fb", None, ("http://h:15672/api", "a/b")),
        ("amqps://u:p@h:5671/v", None, ("https://h:15671/api", "v")),
        ("amqp://u:p@[::1]:5672/v", None, ("http://[::1]:15672/api", "v")),
        ("amqp://localhost", None, ("http://localhost:15672/api", "/")),
        ("amqp://u:p@h/v", "http://mgmt:8080", ("http://mgmt:8080/api", "v")),
        ("amqp://u:p@h/v", "https://x:y@mgmt/rabbit/api/", ("https://mgmt/rabbit/api", "v")),
    ],
)
def test_the_api_url_and_vhost(amqp: str, api: str | None, expected: tuple[str, str]) -> None:
    management = RabbitManagement.from_urls(amqp, api)
    assert (management.api_url, management.vhost) == expected


def test_credentials_come_from_the_api_url_else_the_amqp_url_else_guest() -> None:
    assert RabbitManagement.from_urls("amqp://a%40b:p%3Aw@h/")._auth == ("a@b", "p:w")
    assert RabbitManagement.from_urls("amqp://a:b@h/", "http://c:d@m/api")._auth == ("c", "d")
    assert RabbitManagement.from_urls("amqp://a:b@h/", "http://m/api")._auth == ("a", "b")
    assert RabbitManagement.from_urls("amqp://h/")._auth == ("guest", "guest")


def test_credentials_never_show_in_its_repr() -> None:
    shown = repr(RabbitManagement.from_urls("amqp://user:s3cret@h/v", "http://x:t0p@m/api"))
    assert "s3cret" not in shown and "t0p" not in shown
    assert shown == "RabbitManagement('http://m/api', vhost='v')"
