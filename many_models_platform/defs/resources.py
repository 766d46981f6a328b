"""Dagster resources: where the lake, registries and warehouse are, per environment.

Every field defaults to the embedded stores under ``MMP_HOME`` (see storage.settings); set the
environment variables of the code location to point at ADLS, a PostgreSQL-backed MLflow or Synapse.
Credentials come from the environment only: run config is stored with the run and shown in the UI,
so a field given there with a password in it is refused (``{env: VAR}`` is fine).
"""

from typing import Any

from dagster import ConfigurableResource, InitResourceContext

from ..storage.redaction import redact
from ..storage.settings import PlatformSettings

_URI_FIELDS = (
    "lake_url",
    "candidate_registry_uri",
    "production_registry_uri",
    "production_registry_write_uri",
    "artifact_root",
    "production_artifact_root",
    "warehouse_url",
)
_ENV_VARS = {
    "lake_url": "MMP_LAKE_URL",
    "candidate_registry_uri": "MMP_CANDIDATE_REGISTRY_URI",
    "production_registry_uri": "MMP_PRODUCTION_REGISTRY_URI",
    "production_registry_write_uri": "MMP_PRODUCTION_REGISTRY_WRITE_URI",
    "artifact_root": "MMP_ARTIFACT_ROOT",
    "production_artifact_root": "MMP_PRODUCTION_ARTIFACT_ROOT",
    "warehouse_url": "MMP_WAREHOUSE_URL",
}


class PlatformResource(ConfigurableResource):
    """The platform's stores. Empty fields fall back to the environment (MMP_*)."""

    home: str | None = None
    lake_url: str | None = None
    candidate_registry_uri: str | None = None
    production_registry_uri: str | None = None
    production_registry_write_uri: str | None = None
    artifact_root: str | None = None
    production_artifact_root: str | None = None
    warehouse_url: str | None = None

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run = context.dagster_run
        if run is not None:
            refuse_credentials_in_run_config(run.run_config)

    def settings(self) -> PlatformSettings:
        base = PlatformSettings.from_env(self.home)
        overrides = {k: v for k in _URI_FIELDS if (v := getattr(self, k))}
        if self.production_registry_uri and not self.production_registry_write_uri:
            # never read one store and write another: without its own write URI, promotion writes
            # where this resource says production is
            overrides["production_registry_write_uri"] = self.production_registry_uri
        settings = base.model_copy(update=overrides)
        settings.ensure_local_dirs()
        return settings


def refuse_credentials_in_run_config(run_config: dict[str, Any] | None) -> None:
    """Refuse a literal credential in ``resources.platform.config``: it is stored with the run and
    shown in the UI. A value read from the environment (``{env: VAR}``) is not stored, so it may."""
    fields = ((run_config or {}).get("resources") or {}).get("platform", {}) or {}
    for name, value in (fields.get("config") or {}).items():
        if isinstance(value, str) and redact(value) != value:
            var = _ENV_VARS.get(name, "an environment variable")
            raise ValueError(
                f"resources.platform.config.{name} holds a credential ({redact(value)}); run config is "
                f"stored with the run and shown in the UI. Set {var} in the code location's environment, "
                f"or give `{name}: {{env: {var}}}` instead. Change that password: it is in this run's config."
            )
