"""The embedded Dagster instance's storage: Dagster's SQLite storage, with asset events written
in batches.

Dagster's ``SqliteEventLogStorage`` has no batch write: with ``DAGSTER_EVENT_BATCH_SIZE`` set,
a batch of materializations still goes in one event at a time, each opening the run's
database and the index database and committing twice (about 12 ms per key and stage here,
so minutes for a few thousand keys). Here a batch of asset events goes into each database in
one transaction, with the same rows, tags and asset entries, in the same order, as writing
them one by one. ``mmp`` names this storage in the instances it creates
(:data:`INSTANCE_STORAGE_YAML`); instances on PostgreSQL are unaffected (``dagster_postgres``
has its own batch write).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster import _check as check
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from dagster._utils import mkdir_p

# The storage section of an instance ``mmp`` creates (``defs.runner.instance_yaml``). It is added
# to the copy of the repository's dagster.yaml, not kept in that file: Dagster's own commands read
# the dagster.yaml of the current directory when DAGSTER_HOME is unset, and this needs it set.
INSTANCE_STORAGE_YAML = f"""\
# Dagster's SQLite storage under $DAGSTER_HOME (runs, event log, schedules), with a run's asset
# events written in batches (many_models_platform/defs/event_log.py)
storage:
  custom:
    module: {__name__}
    class: BatchedSqliteStorage
    config:
      base_dir:
        env: DAGSTER_HOME
"""


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` whose ``store_event_batch`` writes a run's asset events in one
    transaction per database instead of two per event."""

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> BatchedSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        check.sequence_param(events, "events", of_type=EventLogEntry)
        run_ids = {event.run_id for event in events}
        # what ``store_event`` writes for these events is a row in the run's database and, in the
        # index database, the row, its tags and the asset's entry; anything else goes one by one
        if len(run_ids) != 1 or not all(
            event.is_dagster_event and event.get_dagster_event().event_type in ASSET_EVENTS for event in events
        ):
            return super().store_event_batch(events)
        rows = [self._event_to_row(event) for event in events]
        (run_id,) = run_ids
        with self.run_connection(run_id) as conn:
            written = _insert_rows(conn, rows)
        try:
            with self.index_transaction() as conn:
                event_ids = _insert_rows(conn, rows)
                self._store_asset_event_tags(conn, events, event_ids)
                for i in _last_of_each_kind(events):
                    self._store_asset_event(conn, events[i], event_ids[i])
        except Exception:
            # Dagster then stores the batch one event at a time: take back the run's rows first,
            # so none is stored twice
            with self.run_connection(run_id) as conn:
                conn.execute(SqlEventLogStorageTable.delete().where(SqlEventLogStorageTable.c.id.in_(written)))
            raise


def _insert_rows(conn: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Insert event rows; their ids in order. One statement per few hundred rows where SQLite
    has ``RETURNING`` (3.35 and later), else one per row."""
    table = SqlEventLogStorageTable
    if conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        result = conn.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True), rows)
        ids = [row[0] for row in result.all()]
    else:
        ids = [conn.execute(table.insert().values(**row)).inserted_primary_key[0] for row in rows]
    if len(ids) != len(rows) or any(i is None for i in ids):
        raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
    return ids


def _last_of_each_kind(events: Sequence[EventLogEntry]) -> list[int]:
    """Positions of the events whose asset entries still count after the batch: each asset's last
    event of each type, in order. An asset's entry takes each column from the event that sets it
    (the last materialization, the last run, the last timestamp), and every event of a type sets
    the same columns, so applying these gives the entry that applying every event gives."""
    last: dict[tuple[Any, Any], int] = {}
    for i, event in enumerate(events):
        dagster_event = event.get_dagster_event()
        last[(dagster_event.asset_key, dagster_event.event_type)] = i
    return sorted(last.values())


class BatchedSqliteStorage(DagsterSqliteStorage):
    """Dagster's default SQLite storage (runs, event log, schedules under ``base_dir``) with
    :class:`BatchedSqliteEventLogStorage` as its event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data=inst_data)
        self._event_log_storage.dispose()
        self._event_log_storage = BatchedSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> BatchedSqliteStorage:
        mkdir_p(config_value["base_dir"])
        return cls(inst_data=inst_data, **config_value)
