"""A process-wide progress hook. The CLI installs a progress bar here; stages report keys
done. Runs executed in process (``mmp run``) call the stages in this very process, so the
hook sees every key without going through the event log."""

from __future__ import annotations

from collections.abc import Callable

Reporter = Callable[[str, str, int], None]
_reporter: Reporter | None = None


def set_reporter(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


def for_stage(use_case: str, stage: str) -> Callable[[int], None] | None:
    reporter = _reporter
    if reporter is None:
        return None
    return lambda n: reporter(use_case, stage, n)
