"""The BI layer: the dbt project in ``dbt_project/`` over the published warehouse tables. No Dagster.

- ``dbt_target_for(warehouse_url)``: the pure mapping from the platform's warehouse URL to a
  profiles.yml target and the environment variables that profile reads (no I/O);
- ``prepare_manifest()``: ``dbt parse`` when the manifest is missing or older than the project;
- ``build_bi_marts(settings)``: ``dbt build`` against the settings' warehouse (``mmp bi`` and the
  Dagster assets in ``defs/dbt.py`` call it or its pieces), returning one result per dbt node.

DuckDB allows one writer process, and dbt writes its models into the warehouse file: dbt runs
only once no publisher holds the file (the publisher disposes its engine after each stage).
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from .storage.settings import PlatformSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
DBT_PROFILE = "many_models_platform"
SOURCE_NAME = "warehouse"  # the dbt source; its tables are the Dagster assets warehouse/<table>
WAREHOUSE_TABLES = (
    "predictions",
    "key_metrics",
    "key_status",
    "promotion_history",
    "run_summary",
    "model_family",
    "key_columns",
)
BI_GROUP = "bi"
WAREHOUSE_GROUP = "warehouse"
BI_JOB = "bi_marts"
# The manifest only shapes the asset graph, so one parse with the DuckDB target (which needs no
# connection) serves every warehouse; `dbt build` re-parses for its real target.
PARSE_TARGET = "duckdb"
_IGNORED_DIRS = {"target", "logs", "dbt_packages"}
_IGNORED_FILES = {".user.yml"}  # dbt's anonymous user id, written into the profiles dir
_LOCK_WAIT_SECONDS = 120.0


# --- warehouse URL -> dbt target -------------------------------------------------------------
@dataclass(frozen=True)
class DbtTarget:
    """A profiles.yml output and the environment variables it reads."""

    name: str  # duckdb | postgres | sqlserver | synapse
    env: dict[str, str]
    adapter: str  # the dbt adapter type behind it

    @property
    def duckdb_path(self) -> str | None:
        return self.env.get("MMP_DBT_DUCKDB_PATH")


def dbt_target_for(warehouse_url: str) -> DbtTarget:
    """Map ``MMP_WAREHOUSE_URL`` to the dbt target of ``dbt_project/profiles.yml``.

    - ``duckdb:///path`` -> ``duckdb`` with ``MMP_DBT_DUCKDB_PATH`` (made absolute);
    - ``postgresql[+driver]://user:password@host:port/db[?sslmode=...]`` -> ``postgres``;
    - ``mssql+pyodbc://user:password@server:port/db[?TrustServerCertificate=yes&authentication=...]``
      or ``mssql+pyodbc:///?odbc_connect=<Server=...;Database=...;Uid=...;Pwd=...>`` -> ``sqlserver``,
      or ``synapse`` when the server is an Azure Synapse endpoint (``*.sql.azuresynapse.net``).
    """
    url = make_url(warehouse_url)
    backend = url.get_backend_name()
    query = {k.lower(): v if isinstance(v, str) else v[-1] for k, v in url.query.items()}
    if backend == "duckdb":
        path = url.database or ""
        if not path or path == ":memory:" or path.startswith(":memory:"):
            raise ValueError(
                "dbt needs a DuckDB file, not an in-memory database: set MMP_WAREHOUSE_URL=duckdb:///<path>"
            )
        return DbtTarget("duckdb", {"MMP_DBT_TARGET": "duckdb", "MMP_DBT_DUCKDB_PATH": os.path.abspath(path)}, "duckdb")
    if backend in ("postgresql", "postgres"):
        if not url.database:
            raise ValueError(f"no database name in the PostgreSQL warehouse URL {url!r}")
        env = {
            "MMP_DBT_TARGET": "postgres",
            "MMP_DBT_PG_HOST": url.host or "localhost",
            "MMP_DBT_PG_PORT": str(url.port or 5432),
            "MMP_DBT_PG_USER": url.username or "postgres",
            "MMP_DBT_PG_PASSWORD": url.password or "",
            "MMP_DBT_PG_DBNAME": url.database,
        }
        if "sslmode" in query:
            env["MMP_DBT_PG_SSLMODE"] = query["sslmode"]
        return DbtTarget("postgres", env, "postgres")
    if backend == "mssql":
        odbc = _odbc_pairs(query.get("odbc_connect", ""))
        server = odbc.get("server") or url.host or ""
        port = url.port
        server = server.removeprefix("tcp:")
        if "," in server:  # ODBC spells the port as "host,1433"
            server, _, odbc_port = server.partition(",")
            port = int(odbc_port)
        database = odbc.get("database") or url.database
        if not server or not database:
            raise ValueError("the SQL Server warehouse URL needs a server and a database")
        trust = (odbc.get("trustservercertificate") or query.get("trustservercertificate") or "no").lower()
        env = {
            "MMP_DBT_MSSQL_SERVER": server,
            "MMP_DBT_MSSQL_PORT": str(port or 1433),
            "MMP_DBT_MSSQL_DATABASE": database,
            "MMP_DBT_MSSQL_USER": odbc.get("uid") or url.username or "",
            "MMP_DBT_MSSQL_PASSWORD": odbc.get("pwd") or url.password or "",
            "MMP_DBT_MSSQL_TRUST_CERT": "true" if trust in ("yes", "true", "1") else "false",
        }
        auth = odbc.get("authentication") or query.get("authentication")
        if auth:
            env["MMP_DBT_MSSQL_AUTHENTICATION"] = auth
        name = "synapse" if server.lower().endswith(".sql.azuresynapse.net") else "sqlserver"
        return DbtTarget(name, {"MMP_DBT_TARGET": name, **env}, "sqlserver")
    raise ValueError(f"no dbt target for warehouse URL scheme {url.drivername!r} (duckdb, postgresql, mssql)")


def _odbc_pairs(conn_str: str) -> dict[str, str]:
    """``Key=value;`` pairs of an ODBC connection string, keys lower-cased. A value in braces
    may hold ``;`` and ``=``, and ``}}`` inside braces is a literal ``}`` (the ODBC rules), so a
    password like ``{x;y}`` stays whole."""
    pairs: dict[str, str] = {}
    i, n = 0, len(conn_str)
    while i < n:
        eq = conn_str.find("=", i)
        if eq < 0:
            break
        key = conn_str[i:eq].strip().lower()
        i = eq + 1
        while i < n and conn_str[i] == " ":
            i += 1
        if i < n and conn_str[i] == "{":
            value, i = [], i + 1
            while i < n:
                if conn_str[i] == "}":
                    if conn_str[i + 1 : i + 2] == "}":
                        value.append("}")
                        i += 2
                        continue
                    i += 1
                    break
                value.append(conn_str[i])
                i += 1
            text = "".join(value)
            end = conn_str.find(";", i)
            i = n if end < 0 else end + 1
        else:
            end = conn_str.find(";", i)
            text, i = (conn_str[i:], n) if end < 0 else (conn_str[i:end], end + 1)
            text = text.strip()
        if key:
            pairs[key] = text
    return pairs


# --- the manifest ----------------------------------------------------------------------------
def manifest_path(project_dir: Path = DBT_PROJECT_DIR) -> Path:
    return project_dir / "target" / "manifest.json"


def manifest_is_fresh(project_dir: Path = DBT_PROJECT_DIR) -> bool:
    """True when target/manifest.json is newer than every file and folder of the project."""
    manifest = manifest_path(project_dir)
    if not manifest.exists():
        return False
    built = manifest.stat().st_mtime_ns
    for root, dirs, files in os.walk(project_dir):
        if Path(root) == project_dir:
            dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS]
            files = [f for f in files if f not in _IGNORED_FILES]
        for name in [*files, *dirs]:
            if (Path(root) / name).stat().st_mtime_ns > built:
                return False
    return True


def prepare_manifest(project_dir: Path = DBT_PROJECT_DIR) -> Path:
    """target/manifest.json, parsed by ``dbt parse`` first if it is missing or stale.

    Works on a fresh clone (no target/): the first definitions load parses (a few seconds, no
    database connection). Processes that load definitions at the same time parse once: the
    others wait on a file lock and then find the manifest fresh. The parse writes into its own
    folder and the manifest is moved into place atomically, so a reader never sees half a file.
    """
    manifest = manifest_path(project_dir)
    if manifest_is_fresh(project_dir):
        return manifest
    from filelock import FileLock  # a dependency of dagster

    manifest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(manifest.parent / ".manifest.lock"), timeout=300):
        if manifest_is_fresh(project_dir):
            return manifest
        scratch = manifest.parent / f".parse-{uuid.uuid4().hex[:8]}"
        try:
            proc = run_dbt(
                [
                    "parse",
                    "--quiet",
                    "--target",
                    PARSE_TARGET,
                    "--target-path",
                    str(scratch),
                    "--log-path",
                    str(scratch),
                ],
                project_dir,
                env={"MMP_DBT_TARGET": PARSE_TARGET},
            )
            if proc.returncode != 0 or not (scratch / "manifest.json").exists():
                raise RuntimeError(f"dbt parse failed in {project_dir}:\n{proc.stdout}\n{proc.stderr}")
            os.replace(scratch / "manifest.json", manifest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return manifest


# --- dbt outside Dagster -----------------------------------------------------------------------
@dataclass(frozen=True)
class NodeResult:
    unique_id: str
    resource_type: str  # model | test | seed | ...
    name: str
    status: str  # success | error | skipped | pass | fail | warn
    seconds: float
    failures: int | None
    message: str | None


@dataclass
class BiBuildResult:
    target: str
    returncode: int
    seconds: float
    target_path: Path
    nodes: list[NodeResult] = field(default_factory=list)
    output: str = ""

    @property
    def success(self) -> bool:
        return self.returncode == 0

    @property
    def failed(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.status in ("error", "fail")]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.status] = out.get(n.status, 0) + 1
        return out


def build_bi_marts(
    settings: "PlatformSettings",
    select: Sequence[str] | None = None,
    command: str = "build",
    project_dir: Path = DBT_PROJECT_DIR,
) -> BiBuildResult:
    """Run ``dbt build`` (models and their tests) against the settings' warehouse.

    Artifacts and logs go to ``$MMP_HOME/dbt/target`` (nothing is written into the source tree);
    keeping one folder there lets dbt parse incrementally on the next run.
    """
    target = dbt_target_for(settings.warehouse_url)
    target_path = Path(settings.home) / "dbt" / "target"
    target_path.mkdir(parents=True, exist_ok=True)
    (target_path / "run_results.json").unlink(missing_ok=True)
    args = [command, "--target", target.name, "--target-path", str(target_path), "--log-path", str(target_path)]
    if select:
        args += ["--select", *select]
    t0 = time.perf_counter()
    from filelock import FileLock  # a dependency of dagster

    # one build at a time per data directory: they share target/ (run_results.json, partial parse)
    with FileLock(str(target_path.parent / ".build.lock"), timeout=_LOCK_WAIT_SECONDS * 5):
        proc = _build_when_free(target, args, project_dir)
    result = BiBuildResult(
        target.name, proc.returncode, time.perf_counter() - t0, target_path, output=proc.stdout + proc.stderr
    )
    results_file = target_path / "run_results.json"
    if results_file.exists():
        result.nodes = node_results(json.loads(results_file.read_text()))
    return result


def node_results(run_results: Mapping[str, Any]) -> list[NodeResult]:
    """One NodeResult per entry of dbt's run_results.json, in execution order."""
    out = []
    for r in run_results.get("results", []):
        kind, _, rest = r["unique_id"].partition(".")
        name = rest.partition(".")[2]
        if kind == "test":  # test.<project>.<name>.<hash>
            name = name.rsplit(".", 1)[0]
        out.append(
            NodeResult(
                unique_id=r["unique_id"],
                resource_type=kind,
                name=name,
                status=str(r.get("status")),
                seconds=float(r.get("execution_time") or 0.0),
                failures=r.get("failures"),
                message=r.get("message"),
            )
        )
    return out


def wait_for_warehouse(target: DbtTarget, timeout: float = _LOCK_WAIT_SECONDS) -> None:
    """On DuckDB, wait until no other process holds the warehouse file (one writer at a time)."""
    path = target.duckdb_path
    if not path:
        return
    if not Path(path).exists():
        raise FileNotFoundError(f"no warehouse at {path}: publish a use case first (mmp run)")
    from .storage.warehouse import Warehouse

    wh = Warehouse(f"duckdb:///{path}")  # the publisher's own wait for DuckDB's writer lock
    try:
        wh.connect(wait_seconds=timeout).close()
    finally:
        wh.dispose()


def _build_when_free(target: DbtTarget, args: list[str], project_dir: Path):
    """Run dbt once the warehouse is free; on DuckDB, a publisher can take the file between the
    check and dbt's own connection, so a build that failed on the lock is retried until the deadline."""
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        wait_for_warehouse(target, timeout=max(1.0, deadline - time.monotonic()))
        proc = run_dbt(args, project_dir, env=target.env)
        output = proc.stdout + proc.stderr
        locked = target.duckdb_path and proc.returncode != 0 and "Could not set lock on file" in output
        if not locked or time.monotonic() > deadline:
            return proc
        time.sleep(1.0)


def _dbt_command() -> list[str]:
    return [sys.executable, "-m", "dbt.cli.main"]


def dbt_executable() -> str:
    exe = Path(sys.executable).parent / ("dbt.exe" if os.name == "nt" else "dbt")
    return str(exe) if exe.exists() else (shutil.which("dbt") or "dbt")


def run_dbt(args: list[str], project_dir: Path = DBT_PROJECT_DIR, env: Mapping[str, str] | None = None):
    """``dbt <args>`` on the project in a subprocess (this interpreter's dbt), output captured."""
    full_env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", **(env or {})}
    return subprocess.run(
        [*_dbt_command(), *args, "--project-dir", str(project_dir), "--profiles-dir", str(project_dir)],
        env=full_env,
        capture_output=True,
        text=True,
        cwd=project_dir,
    )


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the dbt subprocess DbtCliResource spawns (it copies os.environ)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- Dagster ---------------------------------------------------------------------------------
