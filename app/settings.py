"""Configuration from the environment (prefix ``JOBTRAIL_``), built by entrypoints only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("var")
SQL_SCHEMES = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+asyncpg", "postgres")
MONGO_SCHEMES = ("mongodb", "mongodb+srv")


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _known_url(url: str, schemes: tuple[str, ...], what: str) -> str:
    if _scheme(url) not in schemes:
        named = _scheme(url) or "no scheme"
        raise ValueError(f"{what} must start with one of {', '.join(schemes)}:// (got {named})")
    return url


class Settings(BaseSettings):
    """Every knob of a Jobtrail process. The defaults run on one machine with no MongoDB."""

    model_config = SettingsConfigDict(env_prefix="JOBTRAIL_", extra="ignore")

    rabbit_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    data_dir: Path = DEFAULT_DATA_DIR
    """Where the embedded SQLite files live when no URL names a database (relative paths are
    read from the working directory, and made absolute when the settings are read)."""
    log_url: str = Field(
        default="",
        description="mongodb://… for the production MongoDB log, or a SQLAlchemy URL",
    )
    sql_url: str = ""
    policy_file: Path | None = None
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    partitions: int = Field(default=4, ge=1, le=64)
    """Partition queues jobs are spread over; every tracker of a deployment must agree."""
    member_ttl_s: float = Field(default=5.0, ge=0.5, le=300)
    """Seconds without a heartbeat after which a tracker's partitions go to the others."""
    outbox_lease_s: float = Field(default=30.0, ge=1, le=3600)
    """Seconds a tracker's outbox relay holds the rows it claimed before others may take them."""
    prefetch: int = Field(default=256, ge=1, le=65535)
    batch_size: int = Field(default=256, ge=1, le=10000)
    batch_wait_ms: float = Field(default=10.0, ge=0, le=10000)
    timer_interval_ms: float = Field(default=250.0, gt=0, le=10000)
    log_level: str = "INFO"
    fleet_page_events: int = Field(default=50_000, ge=1_000, le=10_000_000)
    """Log entries one ``GET /fleet`` request scans at most (one job more); a cursor continues."""
    log_format: Literal["auto", "json", "plain"] = "auto"
    """``auto``: one plain line per record on a terminal, JSON lines otherwise."""
    workers: int | None = Field(default=None, ge=1, le=256)
    """Tracker processes ``jobtrail serve`` runs (``--workers``); unset: the machine's cores when
    both stores take several writers, 1 with SQLite (one writer)."""
    stop_grace_s: float = Field(default=30.0, gt=0, le=3600)
    """Seconds ``serve --workers N`` waits for its workers to stop before it kills them."""

    @field_validator("log_url")
    @classmethod
    def _log_url_is_known(cls, url: str) -> str:
        return url and _known_url(url, MONGO_SCHEMES + SQL_SCHEMES, "the event log URL")

    @field_validator("sql_url")
    @classmethod
    def _sql_url_is_known(cls, url: str) -> str:
        return url and _known_url(url, SQL_SCHEMES, "the SQL URL")

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        """The SQLite files of the embedded mode, at an absolute path under ``data_dir``."""
        self.data_dir = self.data_dir.expanduser().absolute()
        if not self.log_url:
            self.log_url = f"sqlite+aiosqlite:///{self.data_dir / 'jobtrail-log.db'}"
        if not self.sql_url:
            self.sql_url = f"sqlite+aiosqlite:///{self.data_dir / 'jobtrail.db'}"
        return self

    @property
    def uses_mongo(self) -> bool:
        return self.log_url.startswith(("mongodb://", "mongodb+srv://"))
