"""The environment that paces a real Dagster daemon's fixed loops for a test (see
daemon_pace/sitecustomize.py): the backfill loop every 2 s instead of 30 s. The sensor loop keeps
its 5 s (at 2 s the marts' automation sensor once launched two dbt runs 8 s apart, each before the
other had started). Everything else the daemon does is as in production."""

import os
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "daemon_pace"


def env(base: dict[str, str] | None = None) -> dict[str, str]:
    base = dict(os.environ if base is None else base)
    path = base.get("PYTHONPATH")
    base["PYTHONPATH"] = f"{FOLDER}{os.pathsep}{path}" if path else str(FOLDER)
    base["MMP_TEST_BACKFILL_LOOP_SECONDS"] = "2"
    return base
