-- One row per publishing run (a large use case has several per run date: one per key range).
select
    use_case,
    cast(run_date as date) as run_date,
    dagster_run_id,
    cast(keys_total as {{ dbt.type_int() }}) as keys_total,
    cast(keys_published as {{ dbt.type_int() }}) as keys_published,
    cast(keys_failed as {{ dbt.type_int() }}) as keys_failed,
    cast(keys_promoted as {{ dbt.type_int() }}) as keys_promoted,
    lower(metric) as metric_name,
    cast(metric_p10 as {{ mmp_type_double() }}) as metric_p10,
    cast(metric_p50 as {{ mmp_type_double() }}) as metric_p50,
    cast(metric_p90 as {{ mmp_type_double() }}) as metric_p90,
    cast(published_at as {{ dbt.type_timestamp() }}) as published_at,
    cast(rows_landed as {{ dbt.type_bigint() }}) as rows_landed,
    cast(rows_dropped as {{ dbt.type_bigint() }}) as rows_dropped,
    cast(rows_merged as {{ dbt.type_bigint() }}) as rows_merged,
    cast(files_rejected as {{ dbt.type_int() }}) as files_rejected,
    stopped_at_stage,
    case when stopped_at_stage is null then 0 else 1 end as is_stopped,
    stop_reason
from {{ source('warehouse', 'run_summary') }}
