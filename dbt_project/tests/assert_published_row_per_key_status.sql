-- Every key and run date in key_status carries its `published` row (written in the same transaction).
select use_case, key_id, run_date
from {{ ref('stg_key_status') }}
group by use_case, key_id, run_date
having sum(case when stage = 'published' then 1 else 0 end) <> 1
