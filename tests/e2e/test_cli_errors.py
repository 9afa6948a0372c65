"""Bad command lines and unreachable stores: one line on standard error, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def jobtrail(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")} | env
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (("status",), {}, 2, "jobtrail: Missing argument 'job_id'. (see 'jobtrail status --help')"),
        (
            ("status", "bad id!"),
            {},
            2,
            "jobtrail: Invalid value for 'job_id': 'bad id!' is not a job id",
        ),
        (("history", '{"$gt": ""}'), {}, 2, "jobtrail: Invalid value for 'job_id'"),
        (("nope",), {}, 2, "jobtrail: No such command 'nope'."),
        (
            ("sla", "--by", "pool,node"),
            {},
            2,
            "jobtrail: Invalid value for '--by': cannot group by 'node'",
        ),
        (("sla", "--since", "yesterday"), {}, 2, "jobtrail: Invalid value for '--since'"),
        (
            ("fairness", "--since", "999999d"),
            {},
            2,
            "jobtrail: Invalid value for '--since': 999999d ago is before the year 1",
        ),
        (
            ("fairness", "--factor", "1"),
            {},
            2,
            "jobtrail: Invalid value for '--factor': 1.0 is not above 1",
        ),
        (("verify", "--bogus"), {}, 2, "jobtrail: No such option: --bogus"),
        (
            ("bench", "--smoke", "--markdown", "/proc/version/rows.md"),
            {},
            2,
            "jobtrail: cannot write /proc/version/rows.md",
        ),
        (
            ("status", "j1"),
            {"JOBTRAIL_HTTP_PORT": "abc"},
            2,
            "jobtrail: invalid setting JOBTRAIL_HTTP_PORT",
        ),
        (
            ("status", "j1"),
            {"JOBTRAIL_LOG_URL": "foo://bar"},
            2,
            "jobtrail: invalid setting JOBTRAIL_LOG_URL: the event log URL must start with one of",
        ),
        (
            ("status", "j1"),
            {"JOBTRAIL_SQL_URL": "mongodb://127.0.0.1/x"},
            2,
            "jobtrail: invalid setting JOBTRAIL_SQL_URL: the SQL URL must start with one of",
        ),
        (
            ("status", "j1"),
            {"JOBTRAIL_SQL_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/x"},
            3,
            "jobtrail: ",
        ),
        (
            ("verify",),
            {"JOBTRAIL_LOG_URL": "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=500"},
            3,
            "jobtrail: ",
        ),
    ],
)
def test_bad_input_gets_one_line_and_an_exit_code(
    args: tuple[str, ...], env: dict[str, str], code: int, message: str, tmp_path: Path
) -> None:
    env = {
        "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/p.db",
        "JOBTRAIL_LOG_URL": f"sqlite+aiosqlite:///{tmp_path}/l.db",
    } | env
    result = jobtrail(*args, **env)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message)
    assert "Traceback" not in result.stderr + result.stdout


def test_a_bad_policy_file_is_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[defaults]\nmax_attempts = 0\n")
    result = jobtrail(
        "migrate",
        JOBTRAIL_POLICY_FILE=str(policy),
        JOBTRAIL_SQL_URL=f"sqlite+aiosqlite:///{tmp_path}/p.db",
        JOBTRAIL_LOG_URL=f"sqlite+aiosqlite:///{tmp_path}/l.db",
    )
    # migrate does not need the policy; serve does, and says what is wrong in one line.
    assert result.returncode == 0, result.stderr
    result = jobtrail(
        "status",
        "j1",
        JOBTRAIL_POLICY_FILE=str(policy),
        JOBTRAIL_SQL_URL=f"sqlite+aiosqlite:///{tmp_path}/p.db",
        JOBTRAIL_LOG_URL=f"sqlite+aiosqlite:///{tmp_path}/l.db",
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "max_attempts" in result.stderr


def test_an_unexpected_error_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from app.entrypoints import cli

    async def broken(*_: object) -> int:
        raise RuntimeError("the unforeseen\nsecond line")

    monkeypatch.setattr(cli, "with_readers", broken)
    monkeypatch.setattr("sys.argv", ["jobtrail", "status", "j1"])
    monkeypatch.setenv("JOBTRAIL_SQL_URL", f"sqlite+aiosqlite:///{tmp_path}/p.db")
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "jobtrail: unexpected error: RuntimeError: the unforeseen "
        "(JOBTRAIL_LOG_LEVEL=DEBUG logs the traceback)"
    ]


def test_serve_logs_plain_lines_when_asked(tmp_path: Path) -> None:
    result = jobtrail(
        "serve",
        JOBTRAIL_LOG_FORMAT="plain",
        JOBTRAIL_RABBIT_URL="amqp://guest:guest@127.0.0.1:1/",
        JOBTRAIL_SQL_URL=f"sqlite+aiosqlite:///{tmp_path}/p.db",
        JOBTRAIL_LOG_URL=f"sqlite+aiosqlite:///{tmp_path}/l.db",
        JOBTRAIL_HTTP_PORT="0",
    )
    assert result.returncode == 2
    (warning,) = [line for line in result.stderr.splitlines() if "EMBEDDED MODE" in line]
    assert " WARNING jobtrail: EMBEDDED MODE" in warning and not warning.startswith("{")


def test_a_command_run_away_from_the_embedded_data_names_it_and_the_fix(tmp_path: Path) -> None:
    elsewhere, data = tmp_path / "elsewhere", tmp_path / "data"
    elsewhere.mkdir()
    where = {"PYTHONPATH": str(ROOT)}
    result = jobtrail("status", "j1", cwd=elsewhere, **where)
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"jobtrail: no Jobtrail database at {elsewhere / 'var'}/jobtrail.db")
    assert "JOBTRAIL_DATA_DIR" in line and "Traceback" not in result.stderr
    migrated = jobtrail("migrate", cwd=tmp_path, JOBTRAIL_DATA_DIR=str(data), **where)
    assert migrated.returncode == 0, migrated.stderr
    found = jobtrail("status", "j1", cwd=elsewhere, JOBTRAIL_DATA_DIR=str(data), **where)
    assert found.returncode == 2 and "no events for job 'j1'" in found.stderr, found.stderr
