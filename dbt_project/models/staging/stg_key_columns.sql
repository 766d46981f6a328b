-- One row per key column of each published key: the column's name as in the source and the
-- key's value in it (text, exactly as in the source). position is 0-based, in the order of the
-- use case's `keys`.
select
    use_case,
    {{ adapter.quote('key') }} as key_id,
    cast({{ adapter.quote('position') }} as {{ dbt.type_int() }}) as key_column_position,
    column_name as key_column,
    {{ adapter.quote('value') }} as key_value
from {{ source('warehouse', 'key_columns') }}
