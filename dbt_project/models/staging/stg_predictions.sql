-- One row per published prediction row: typed, `key` renamed to key_id (KEY is reserved on SQL Server).
select
    use_case,
    {{ adapter.quote('key') }} as key_id,
    key_label,
    cast(run_date as date) as run_date,
    cast(row_index as {{ dbt.type_int() }}) as row_index,
    row_id,
    cast(period as {{ dbt.type_timestamp() }}) as period,
    cast(period_index as {{ dbt.type_bigint() }}) as period_index,
    lower(kind) as kind,
    cast(prediction as {{ mmp_type_double() }}) as prediction,
    predicted_label,
    cast(actual as {{ mmp_type_double() }}) as actual,
    actual_label,
    model_name,
    cast(model_version as {{ dbt.type_int() }}) as model_version,
    dagster_run_id,
    cast(published_at as {{ dbt.type_timestamp() }}) as published_at
from {{ source('warehouse', 'predictions') }}
