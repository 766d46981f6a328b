-- Percentiles must be ordered: min <= p10 <= p50 <= p90.
select use_case, run_date, metric_name, metric_min, metric_p10, metric_p50, metric_p90
from {{ ref('mart_accuracy_distribution') }}
where metric_p10 > metric_p50
    or metric_p50 > metric_p90
    or metric_p10 < metric_min
