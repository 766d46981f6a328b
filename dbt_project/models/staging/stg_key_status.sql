-- One row per key, run date and stage; stage_order follows the pipeline (1 raw .. 7 published).
-- rows_in .. rows_merged: the stage's row accounting for the key (NULL where the stage keeps none).
select
    use_case,
    {{ adapter.quote('key') }} as key_id,
    cast(run_date as date) as run_date,
    stage,
    case stage
        when 'raw' then 1
        when 'training_set' then 2
        when 'model' then 3
        when 'evaluation' then 4
        when 'promoted_model' then 5
        when 'predictions' then 6
        when 'published' then 7
    end as stage_order,
    key_label,
    lower(status) as status,
    case when lower(status) = 'ok' then 1 else 0 end as is_ok,
    reason,
    dagster_run_id,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
    cast(rows_in as {{ dbt.type_bigint() }}) as rows_in,
    cast(rows_out as {{ dbt.type_bigint() }}) as rows_out,
    cast(rows_dropped as {{ dbt.type_bigint() }}) as rows_dropped,
    cast(rows_merged as {{ dbt.type_bigint() }}) as rows_merged,
    drop_detail
from {{ source('warehouse', 'key_status') }}
