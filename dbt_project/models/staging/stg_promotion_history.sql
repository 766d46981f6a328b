-- One row per promotion decision (a Dagster run's, or a manual rollback's: run id `rollback-<id>`).
select
    use_case,
    {{ adapter.quote('key') }} as key_id,
    cast(run_date as date) as run_date,
    cast(decided_at as {{ dbt.type_timestamp() }}) as decided_at,
    lower(decision) as decision,
    case when lower(decision) = 'rolled_back' then 1 else 0 end as is_rollback,
    reason,
    lower(metric) as metric_name,
    cast(candidate_version as {{ dbt.type_int() }}) as candidate_version,
    cast(candidate_value as {{ mmp_type_double() }}) as candidate_value,
    cast(champion_version as {{ dbt.type_int() }}) as champion_version,
    cast(champion_value as {{ mmp_type_double() }}) as champion_value,
    cast(production_version as {{ dbt.type_int() }}) as production_version,
    decided_by,
    dagster_run_id
from {{ source('warehouse', 'promotion_history') }}
