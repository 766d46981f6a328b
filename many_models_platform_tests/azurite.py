"""Azurite, the Azure Storage emulator, for the lake-on-ADLS tests (fixtures imported by conftest).

``scripts/install-test-services.sh`` installs Azurite 3.35.0 (the newest release that runs on
Node 20) into ``~/.cache/mmp-azurite``. One blob server per test session (per xdist worker) on a
free loopback port, in memory; each test gets its own container. Without Azurite the tests
skip, except under CI, where they fail: CI can never pass by silently skipping them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    from pg_helpers import IN_CI
except ImportError:  # imported from a benchmark
    IN_CI = False

# Azurite's documented development account (public, the same in every Azurite install)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_DIR = Path(os.environ.get("MMP_AZURITE_DIR") or Path.home() / ".cache" / "mmp-azurite")


def azurite_binary() -> str | None:
    local = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.exists() else shutil.which("azurite-blob")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class AzuriteServer:
    port: int
    account: str = ACCOUNT
    account_key: str = ACCOUNT_KEY

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def sas_token(self, hours: float = 2) -> str:
        """An account SAS allowing what the lake does (read, write, list, delete)."""
        from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

        return generate_account_sas(
            self.account,
            self.account_key,
            ResourceTypes(service=True, container=True, object=True),
            AccountSasPermissions(read=True, write=True, list=True, delete=True, create=True, add=True),
            expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours),
        )

    def create_container(self, prefix: str = "lake") -> str:
        from azure.storage.blob import BlobServiceClient

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        with BlobServiceClient.from_connection_string(self.connection_string) as client:
            client.create_container(name)
        return name


@dataclass(frozen=True)
class AzuriteLake:
    """A fresh container on the session's Azurite, and how to reach it."""

    server: AzuriteServer
    container: str

    @property
    def url(self) -> str:
        return f"abfs://{self.container}/lake"

    @property
    def connection_string(self) -> str:
        return self.server.connection_string

    def env(self) -> dict[str, str]:
        """The environment that points the platform's lake here (connection-string variant)."""
        return {"MMP_LAKE_URL": self.url, "AZURE_STORAGE_CONNECTION_STRING": self.connection_string}


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: tests that need Azurite fail instead of skipping)")
    pytest.skip(message)


class AzuriteMissing(RuntimeError):
    pass


@contextlib.contextmanager
def run_azurite(startup_timeout: float = 30) -> Iterator[AzuriteServer]:
    """``azurite-blob`` in memory on a free loopback port; stopped on exit (also used by benchmarks)."""
    binary = azurite_binary()
    if binary is None:
        raise AzuriteMissing("Azurite is not installed: run scripts/install-test-services.sh")
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="mmp-azurite-"))
    args = [binary, "--inMemoryPersistence", "--disableTelemetry", "--loose", "--skipApiVersionCheck"]
    args += ["--blobHost", "127.0.0.1", "--blobPort", str(port)]
    log = open(workdir / "azurite.log", "wb")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Azurite exited at start: {(workdir / 'azurite.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Azurite did not start listening within {startup_timeout} s") from None
                time.sleep(0.05)
        yield AzuriteServer(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteServer]:
    """One Azurite blob server for the session (per xdist worker). Missing: skip, or fail under CI;
    installed but not starting: fail."""
    try:
        with run_azurite() as server:
            yield server
    except AzuriteMissing as exc:
        _missing(str(exc))
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def azurite_lake(azurite: AzuriteServer) -> AzuriteLake:
    """A container of its own for one test."""
    return AzuriteLake(azurite, azurite.create_container())
