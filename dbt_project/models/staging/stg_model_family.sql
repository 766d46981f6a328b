-- One row per use case and key: the newest candidate next to the production model.
select
    use_case,
    {{ adapter.quote('key') }} as key_id,
    key_label,
    lower(metric) as metric_name,
    {{ mmp_higher_is_better('lower(metric)') }} as higher_is_better,
    cast(candidate_version as {{ dbt.type_int() }}) as candidate_version,
    cast(candidate_value as {{ mmp_type_double() }}) as candidate_value,
    cast(production_version as {{ dbt.type_int() }}) as production_version,
    cast(production_source_version as {{ dbt.type_int() }}) as production_source_version,
    cast(production_value as {{ mmp_type_double() }}) as production_value,
    lower(status) as family_status,
    cast(snapshot_at as {{ dbt.type_timestamp() }}) as snapshot_at
from {{ source('warehouse', 'model_family') }}
