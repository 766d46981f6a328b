-- One row per key, run date and stage; stage_order follows the pipeline (1 raw .. 7 published).
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
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at
from {{ source('warehouse', 'key_status') }}
