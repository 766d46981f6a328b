-- One row per key, run date, model role and metric.
select
    use_case,
    {{ adapter.quote('key') }} as key_id,
    cast(run_date as date) as run_date,
    lower(model_role) as model_role,
    lower(metric) as metric_name,
    cast({{ adapter.quote('value') }} as {{ mmp_type_double() }}) as metric_value,
    {{ mmp_higher_is_better('lower(metric)') }} as higher_is_better,
    model_name,
    cast(model_version as {{ dbt.type_int() }}) as model_version,
    estimator,
    dagster_run_id
from {{ source('warehouse', 'key_metrics') }}
