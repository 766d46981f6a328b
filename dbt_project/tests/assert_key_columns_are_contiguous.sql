-- Each key has its key columns at positions 0, 1, .. n - 1, and a use case's keys all have the
-- same number of key columns.
with per_key as (
    select
        use_case,
        key_id,
        min(key_column_position) as first_position,
        max(key_column_position) as last_position,
        count(*) as n_columns
    from {{ ref('stg_key_columns') }}
    group by use_case, key_id
)

select use_case, key_id, first_position, last_position, n_columns
from per_key
where first_position <> 0
    or last_position <> n_columns - 1
    or n_columns <> (select max(p.n_columns) from per_key as p where p.use_case = per_key.use_case)
