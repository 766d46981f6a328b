-- One row per use case, key and key column, with the key's label and newest published status
-- from dim_keys: filter on key_column ('store', 'brand', ...) and group by key_value to slice any
-- fact (joined on use_case, key_id) by one key column.
select
    c.use_case,
    c.key_id,
    k.key_label,
    c.key_column_position,
    c.key_column,
    c.key_value,
    k.last_run_date,
    k.last_published_status
from {{ ref('stg_key_columns') }} as c
inner join {{ ref('dim_keys') }} as k
    on k.use_case = c.use_case
    and k.key_id = c.key_id
