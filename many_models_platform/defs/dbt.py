"""The BI layer in Dagster: every dbt source table becomes an asset ``warehouse/<table>``
downstream of each use case's ``published`` asset (each table holds every use case), and the
dbt models become ``bi/<model>`` assets in the group ``bi``, their tests asset checks. The
manifest is parsed on load when it is missing or older than the project's files (``bi.py``).
"""

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..bi import (
    BI_GROUP,
    BI_JOB,
    DBT_PROFILE,
    DBT_PROJECT_DIR,
    SOURCE_NAME,
    WAREHOUSE_GROUP,
    WAREHOUSE_TABLES,
    dbt_executable,
    dbt_target_for,
    patched_environ,
    prepare_manifest,
    wait_for_warehouse,
)


def build_bi_assets(use_cases: Iterable[str], project_dir: Path = DBT_PROJECT_DIR) -> tuple[list, list]:
    """(assets, jobs): the warehouse tables as assets downstream of every ``published`` asset,
    and the dbt models over them, with a job that builds the models and runs their tests.

    Nothing when the dbt project is not there (an installed wheel ships only the package)."""
    if not (project_dir / "dbt_project.yml").exists():
        warnings.warn(f"no dbt project at {project_dir}: the BI assets are left out", stacklevel=2)
        return [], []
    from dagster import AssetExecutionContext, AssetKey, AssetSelection, AssetSpec, define_asset_job
    from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

    from .resources import PlatformResource

    published = [AssetKey([name, "published"]) for name in use_cases]
    tables = [
        AssetSpec(
            AssetKey([SOURCE_NAME, table]),
            deps=published,
            group_name=WAREHOUSE_GROUP,
            kinds={"sql"},
            description=f"The warehouse table `{table}` (docs/tables.md): written by every use case's "
            "published stage, read by the dbt staging models.",
            metadata={"table": table},
        )
        for table in WAREHOUSE_TABLES
    ]

    class Translator(DagsterDbtTranslator):
        def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
            if dbt_resource_props["resource_type"] == "source":
                return AssetKey([SOURCE_NAME, dbt_resource_props["name"]])
            return AssetKey([BI_GROUP, dbt_resource_props["name"]])

        def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
            return BI_GROUP

        def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: Any) -> AssetSpec:
            # one manifest serves every warehouse, so the kind says dbt + SQL, not the parse adapter
            return super().get_asset_spec(manifest, unique_id, project).replace_attributes(kinds={"dbt", "sql"})

    @dbt_assets(manifest=prepare_manifest(project_dir), dagster_dbt_translator=Translator(), name="bi_dbt_models")
    def bi_dbt_models(context: AssetExecutionContext, platform: PlatformResource):
        settings = platform.settings()
        target = dbt_target_for(settings.warehouse_url)
        wait_for_warehouse(target)
        target_path = Path(settings.home) / "dbt" / "target"
        dbt = DbtCliResource(
            project_dir=str(project_dir),
            profiles_dir=str(project_dir),
            profile=DBT_PROFILE,
            target=target.name,
            dbt_executable=dbt_executable(),
        )
        with patched_environ({"DBT_SEND_ANONYMOUS_USAGE_STATS": "false", **target.env}):
            invocation = dbt.cli(["build"], context=context, target_path=target_path)
        yield from invocation.stream()

    job = define_asset_job(
        BI_JOB,
        selection=AssetSelection.groups(BI_GROUP),
        description="dbt build of the BI marts (models and their tests) on the warehouse.",
    )
    return [*tables, bi_dbt_models], [job]
