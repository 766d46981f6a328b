"""Dagster resources: where the lake, registries and warehouse are, per environment.

Every field defaults to the embedded stores under ``MMP_HOME`` (see storage.settings);
set the environment variables, or the fields in a deployment's run config, to point at
ADLS, a PostgreSQL-backed MLflow or Synapse.
"""

from dagster import ConfigurableResource

from ..storage.settings import PlatformSettings


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

    def settings(self) -> PlatformSettings:
        base = PlatformSettings.from_env(self.home)
        overrides = {
            k: v
            for k, v in {
                "lake_url": self.lake_url,
                "candidate_registry_uri": self.candidate_registry_uri,
                "production_registry_uri": self.production_registry_uri,
                "production_registry_write_uri": self.production_registry_write_uri,
                "artifact_root": self.artifact_root,
                "production_artifact_root": self.production_artifact_root,
                "warehouse_url": self.warehouse_url,
            }.items()
            if v
        }
        if self.production_registry_uri and not self.production_registry_write_uri:
            # never read one store and write another: without its own write URI, promotion writes
            # where this resource says production is
            overrides["production_registry_write_uri"] = self.production_registry_uri
        settings = base.model_copy(update=overrides)
        settings.ensure_local_dirs()
        return settings
