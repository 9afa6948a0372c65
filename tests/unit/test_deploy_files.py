"""The deployment files users run but this machine cannot (no Docker engine, no GitHub runner)
are at least valid against their published schemas, checked with check-jsonschema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKER = Path(sys.executable).parent / "check-jsonschema"


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ("vendor.compose-spec", "docker-compose.yml"),
        *[
            ("vendor.github-workflows", str(p.relative_to(ROOT)))
            for p in sorted((ROOT / ".github" / "workflows").glob("*.yml"))
        ],
    ],
)
def test_deployment_file_is_valid(schema: str, path: str) -> None:
    done = subprocess.run(
        [CHECKER, "--builtin-schema", schema, ROOT / path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_and_the_compose_stack_are_smoke_tested_in_the_workflow() -> None:
    workflow = (ROOT / ".github" / "workflows" / "tests.yml").read_text()
    assert "docker compose up --build --wait" in workflow
    assert "scripts/smoke.py" in workflow
    assert "COPY migrations" in (ROOT / "Dockerfile").read_text()
