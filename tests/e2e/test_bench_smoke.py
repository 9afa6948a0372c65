"""The benchmark works end to end (its figures are not judged here: they are machine-dependent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_measures_every_scenario(tmp_path: Path) -> None:
    output, rows = tmp_path / "bench.json", tmp_path / "rows.md"
    performance_doc = (ROOT / "docs" / "performance.md").read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "bench",
            "--smoke",
            "--json",
            str(output),
            "--markdown",
            str(rows),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    names = [f["name"] for f in report["figures"]]
    assert any(n.startswith("bare aio-pika") for n in names)
    assert any(n.startswith("ingest end to end, PostgreSQL") for n in names)
    assert any(n.startswith("ingest end to end, SecantusDB") for n in names)
    assert any(n.startswith("ingest, 1 `jobtrail serve` process ") for n in names)
    assert any(n.startswith("ingest, 2 `jobtrail serve` processes ") for n in names)
    assert any(n.startswith("ingest, 1 `jobtrail serve --workers 2` process") for n in names)
    assert any(n.startswith("rebuild") for n in names)
    assert any(n.startswith("GET /jobs/{id} p99") for n in names)
    assert any(n.startswith("lease-expiry detection lag") for n in names)
    assert any(n.startswith("retry republish lateness") for n in names)
    assert any(n.startswith("peak RSS of export / replay / verify") for n in names)
    for figure in report["figures"]:
        assert figure["values"], figure
        assert all(v >= 0 for v in figure["values"]), figure
        if figure["unit"] in ("msg/s", "events/s", "ms", "MB"):
            assert all(v > 0 for v in figure["values"]), figure
    ratios = [f["ratio"] for f in report["figures"] if f["baseline"]]
    assert ratios and all(r > 0 for r in ratios)
    assert "jobtrail bench" in result.stdout  # the table
    lines = rows.read_text().splitlines()
    assert [line.split(" | ")[1] for line in lines] == names, "a Markdown row per figure"
    assert (ROOT / "docs" / "performance.md").read_bytes() == performance_doc, "docs/ untouched"
