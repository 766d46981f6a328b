-- A run's keys are either published or failed.
select use_case, run_date, dagster_run_id, keys_total, keys_published, keys_failed
from {{ ref('stg_run_summary') }}
where keys_published + keys_failed <> keys_total
    or keys_promoted > keys_total
