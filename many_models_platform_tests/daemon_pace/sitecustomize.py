"""Test-only pacing of the real Dagster daemon, for processes started with this folder on
PYTHONPATH (``daemon_pace.env``): the backfill daemon sleeps a fixed 30 s between iterations, a
module constant no instance setting reaches (``dagster._daemon.controller
.DEFAULT_DAEMON_INTERVAL_SECONDS``). A test waiting on an asset backfill then waits 30 s per step
for nothing; here the loop runs every ``MMP_TEST_BACKFILL_LOOP_SECONDS``. The daemon, its
threads, its code server and its runs are otherwise untouched."""

import importlib.abc
import importlib.machinery
import os
import sys

PACE = {"dagster._daemon.controller": ("DEFAULT_DAEMON_INTERVAL_SECONDS", "MMP_TEST_BACKFILL_LOOP_SECONDS")}


class _PacedLoader(importlib.abc.Loader):
    def __init__(self, loader, attribute: str, seconds: float):
        self.loader, self.attribute, self.seconds = loader, attribute, seconds

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        setattr(module, self.attribute, self.seconds)


class _Pacer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PACE or not os.environ.get(PACE[name][1]):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            attribute, variable = PACE[name]
            spec.loader = _PacedLoader(spec.loader, attribute, float(os.environ[variable]))
        return spec


sys.meta_path.insert(0, _Pacer())
