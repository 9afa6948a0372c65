from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers


@pytest.fixture(scope="session")
def mongo_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with servers.mongo_server(tmp_path_factory.mktemp("mongo")) as base:
        yield base


@pytest.fixture
def mongo_url(mongo_base_url: str) -> str:
    """A MongoDB URL naming a database of this test's own."""
    return servers.mongo_database_url(mongo_base_url, f"jt_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    with servers.pg_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'jobtrail.db'}"


@pytest.fixture
def rabbit_url() -> Iterator[str]:
    with servers.rabbit_vhost() as url:
        yield url
