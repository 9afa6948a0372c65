"""Bad command lines and unreachable stores: one line on standard error, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def jobtrail(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")} | env
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
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
        (("verify", "--bogus"), {}, 2, "jobtrail: No such option: --bogus"),
        (
            ("status", "j1"),
            {"JOBTRAIL_HTTP_PORT": "abc"},
            2,
            "jobtrail: invalid setting JOBTRAIL_HTTP_PORT",
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
