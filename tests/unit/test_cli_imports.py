"""The CLI and its read-only commands load no server framework and no pyarrow.

Each check runs in a fresh interpreter (this process has loaded everything already) and reads
``sys.modules`` there. The control case shows the check sees a framework when one is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("fastapi", "faststream", "uvicorn", "pyarrow")
REPORT = f"import json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
# Runs `jobtrail <args>` for each args list as the console script would, in one process.
COMMANDS = """
import sys
from app.entrypoints.cli import main
for args in {runs!r}:
    sys.argv = ["jobtrail", *args]
    try:
        main()
    except SystemExit as exc:
        print("exit", args[0], exc.code, file=sys.stderr)
"""


def loaded_heavy(code: str, env: dict[str, str] | None = None) -> list[str]:
    return run_python(code, env)[0]


def run_python(code: str, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """The heavy modules loaded once ``code`` ran in a fresh interpreter, and its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{REPORT}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded, done.stderr


def test_importing_the_cli_loads_no_server_framework_nor_pyarrow() -> None:
    assert loaded_heavy("import app.entrypoints.cli") == []


def test_jobtrail_help_loads_no_server_framework_nor_pyarrow() -> None:
    assert loaded_heavy(COMMANDS.format(runs=[["--help"]])) == []


def test_the_check_sees_a_framework_once_a_serving_module_is_imported() -> None:
    assert loaded_heavy("import app.entrypoints.api_server") == ["fastapi", "uvicorn"]
    assert "faststream" in loaded_heavy("import app.bootstrap.worker")


def test_read_only_commands_load_no_server_framework_nor_pyarrow(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    env["JOBTRAIL_DATA_DIR"] = str(tmp_path)
    subprocess.run(
        [sys.executable, "-c", COMMANDS.format(runs=[["migrate"]])],
        capture_output=True,
        timeout=120,
        check=True,
        env=env,
    )
    runs = [
        ["status", "job-1"],
        ["history", "job-1"],
        ["verify"],
        ["jobs"],
        ["fleet", "--at", "2026-01-01T00:00:00Z"],
        ["export", "--format", "jsonl", "--output", str(tmp_path / "events.jsonl")],
        ["replay", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z"],
        ["analyze"],
    ]
    loaded, stderr = run_python(COMMANDS.format(runs=runs), env)
    assert loaded == []
    exits = [line.split()[1:] for line in stderr.splitlines() if line.startswith("exit ")]
    # Each command ran to its end: status and history say the job has no events.
    assert exits == [[args[0], "2" if args[0] in ("status", "history") else "0"] for args in runs]


def test_a_parquet_export_does_load_pyarrow(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    env["JOBTRAIL_DATA_DIR"] = str(tmp_path)
    runs = [["migrate"], ["export", "--format", "parquet", "--output", str(tmp_path / "e.pq")]]
    assert loaded_heavy(COMMANDS.format(runs=runs), env) == ["pyarrow"]
