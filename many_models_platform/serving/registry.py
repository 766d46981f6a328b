"""Reading the production registry's ``production`` alias straight from MLflow's tables.

The service never imports MLflow (seconds of import time, and its client costs milliseconds a
call): like ``storage.registry._sql_aliases``/``_sql_versions``, it reads MLflow's own tables
with SQLAlchemy, read-only. MLflow 3 added a ``workspace`` column to the registry tables;
when present, rows are filtered on the configured workspace. Two queries exist: one for a key
being loaded (its aliased version, source and tags), one for every cached key at once (the
invalidation check).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa

from ..storage.registry import PRODUCTION_ALIAS

_DELETED = "Deleted_Internal"
# SQLite allows 32766 bound parameters; past that the check reads the alias for every name
_MAX_IN = 30_000


@dataclass(frozen=True)
class ProductionVersion:
    name: str
    version: int
    source: str
    tags: dict[str, str]


class ProductionReader:
    """Read-only access to the production alias of registered models (``<use case>.<key>``)."""

    def __init__(self, uri: str, workspace: str = "default", alias: str = PRODUCTION_ALIAS):
        self.engine = sa.create_engine(uri, pool_pre_ping=True)
        self.alias = alias
        self.workspace = workspace
        self._tables: tuple | None = None

    def _t(self):
        """The four tables, with ``workspace`` when this MLflow schema has it (read once)."""
        if self._tables is None:
            c = sa.column
            has_ws = "workspace" in {col["name"] for col in sa.inspect(self.engine).get_columns("model_versions")}

            def ws():
                return (c("workspace"),) if has_ws else ()

            self._tables = (
                sa.table("registered_model_aliases", c("name"), c("alias"), c("version"), *ws()),
                sa.table("model_versions", c("name"), c("version"), c("source"), c("current_stage"), *ws()),
                sa.table("model_version_tags", c("name"), c("version"), c("key"), c("value"), *ws()),
                has_ws,
            )
        return self._tables

    def ping(self) -> None:
        """Raises when the registry's database cannot be read (``/readyz``)."""
        aliases, *_ = self._t()
        with self.engine.connect() as conn:
            conn.execute(sa.select(aliases.c.name).limit(1)).all()

    def production(self, name: str) -> ProductionVersion | None:
        """The version of ``name`` holding the alias, with its source and tags; None when the
        model is unknown or has no production version. One query."""
        aliases, versions, tags, has_ws = self._t()
        on = [versions.c.name == aliases.c.name, versions.c.version == aliases.c.version]
        on_tags = [tags.c.name == versions.c.name, tags.c.version == versions.c.version]
        where = [aliases.c.name == name, aliases.c.alias == self.alias, versions.c.current_stage != _DELETED]
        if has_ws:
            on.append(versions.c.workspace == aliases.c.workspace)
            on_tags.append(tags.c.workspace == versions.c.workspace)
            where.append(aliases.c.workspace == self.workspace)
        query = (
            sa.select(versions.c.version, versions.c.source, tags.c.key, tags.c.value)
            .select_from(aliases.join(versions, sa.and_(*on)).outerjoin(tags, sa.and_(*on_tags)))
            .where(*where)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return None
        found = {k: v for _, _, k, v in rows if k is not None}
        return ProductionVersion(name, int(rows[0][0]), rows[0][1], found)

    def versions(self, names: Collection[str]) -> dict[str, int]:
        """name -> version holding the alias, for all ``names`` in one query (absent: none)."""
        if not names:
            return {}
        aliases, *_, has_ws = self._t()
        where = [aliases.c.alias == self.alias]
        if has_ws:
            where.append(aliases.c.workspace == self.workspace)
        if len(names) <= _MAX_IN:
            where.append(aliases.c.name.in_(sorted(names)))
        query = sa.select(aliases.c.name, aliases.c.version).where(*where)
        with self.engine.connect() as conn:
            return {n: int(v) for n, v in conn.execute(query) if n in names}

    def dispose(self) -> None:
        self.engine.dispose()
