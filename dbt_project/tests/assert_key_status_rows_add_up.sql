-- A stage's row accounting adds up: every row it received was kept, dropped or merged.
select use_case, key_id, run_date, stage, rows_in, rows_out, rows_dropped, rows_merged
from {{ ref('stg_key_status') }}
where rows_in is not null
    and rows_out is not null
    and rows_in <> rows_out + coalesce(rows_dropped, 0) + coalesce(rows_merged, 0)
