"""Where everything lives. One data directory holds all embedded defaults; every store can
be pointed elsewhere by an environment variable (documented in docs/configuration.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .lake import adls_options_from_env, credential_values, is_azure_url


def default_home() -> Path:
    return Path(os.environ.get("MMP_HOME") or Path.home() / ".mmp").expanduser().resolve()


class PlatformSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    home: str
    config_path: str | None = None
    lake_url: str
    lake_storage_options: dict[str, Any] = {}
    candidate_registry_uri: str
    production_registry_uri: str
    # Write access to production is a separate credential: only the promotion stage and
    # ``mmp promote`` receive it (see for_stage); everything else reads production.
    production_registry_write_uri: str | None = None
    artifact_root: str
    production_artifact_root: str
    warehouse_url: str
    # Where `mmp mlflow-ui` (or your MLflow server) serves the candidate registry: the base of the
    # link from a key's Dagster metadata to its model version.
    mlflow_ui_url: str = "http://localhost:5000"

    @classmethod
    def from_env(cls, home: str | os.PathLike | None = None) -> PlatformSettings:
        home_path = Path(home).expanduser().resolve() if home else default_home()
        env = os.environ.get
        options = {}
        if is_azure_url(env("MMP_LAKE_URL", "")):
            # key, SAS, connection string or none (DefaultAzureCredential): see storage.lake.adlfs_options
            options = adls_options_from_env()
        production = env("MMP_PRODUCTION_REGISTRY_URI") or f"sqlite:///{home_path / 'mlflow' / 'production.db'}"
        return cls(
            home=str(home_path),
            config_path=env("MMP_CONFIG"),
            lake_url=env("MMP_LAKE_URL") or str(home_path / "lake"),
            lake_storage_options=options,
            candidate_registry_uri=env("MMP_CANDIDATE_REGISTRY_URI")
            or f"sqlite:///{home_path / 'mlflow' / 'candidate.db'}",
            production_registry_uri=production,
            production_registry_write_uri=env("MMP_PRODUCTION_REGISTRY_WRITE_URI") or production,
            artifact_root=env("MMP_ARTIFACT_ROOT") or str(home_path / "mlflow" / "artifacts"),
            production_artifact_root=env("MMP_PRODUCTION_ARTIFACT_ROOT")
            or str(home_path / "mlflow" / "production-artifacts"),
            warehouse_url=env("MMP_WAREHOUSE_URL") or f"duckdb:///{home_path / 'warehouse' / 'warehouse.duckdb'}",
            mlflow_ui_url=(env("MMP_MLFLOW_UI_URL") or "http://localhost:5000").rstrip("/"),
        )

    def secrets(self) -> tuple[str, ...]:
        """Every credential these settings hold (store passwords, Azure keys), for
        :func:`redaction.redact` to mask wherever one appears, even outside a URL."""
        from urllib.parse import unquote, urlsplit

        found = []
        for uri in (
            self.lake_url,
            self.candidate_registry_uri,
            self.production_registry_uri,
            self.production_registry_write_uri or "",
            self.artifact_root,
            self.production_artifact_root,
            self.warehouse_url,
        ):
            try:
                password = urlsplit(uri).password
            except ValueError:
                continue
            if password:
                found += [password, unquote(password)]
        found += credential_values(self.lake_storage_options)
        return tuple(dict.fromkeys(s for s in found if len(s) >= 4))

    def ensure_local_dirs(self) -> None:
        """Create the folders the embedded stores need (SQLite and DuckDB will not)."""
        for uri in (self.candidate_registry_uri, self.production_registry_uri, self.warehouse_url):
            for prefix in ("sqlite:///", "duckdb:///"):
                if uri.startswith(prefix):
                    Path(uri.removeprefix(prefix)).parent.mkdir(parents=True, exist_ok=True)
        if "://" not in self.lake_url:
            Path(self.lake_url).mkdir(parents=True, exist_ok=True)
        for root in (self.artifact_root, self.production_artifact_root):
            if "://" not in root:
                Path(root).mkdir(parents=True, exist_ok=True)

    def for_stage(self, stage: str) -> PlatformSettings:
        """These settings as a pipeline stage should see them: only ``promoted_model`` keeps
        the production registry's write credentials; training, evaluation and scoring read it."""
        if stage in WRITES_PRODUCTION:
            return self
        return self.model_copy(update={"production_registry_write_uri": None})


WRITES_PRODUCTION = frozenset({"promoted_model"})
