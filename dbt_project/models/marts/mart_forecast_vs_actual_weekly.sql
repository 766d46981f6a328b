-- fct_forecast_vs_actual by key and ISO week (Monday): one row per use case, key, run date,
-- kind and week. Totals over the week's periods; errors only over periods with an actual.
select
    use_case,
    key_id,
    max(key_label) as key_label,
    run_date,
    kind,
    week_start,
    cast(count(*) as {{ dbt.type_bigint() }}) as n_periods,
    cast(sum(has_actual) as {{ dbt.type_bigint() }}) as n_periods_with_actual,
    sum(prediction) as prediction_total,
    sum(case when has_actual = 1 then prediction end) as prediction_total_with_actual,
    sum(actual) as actual_total,
    sum(error) as error_total,
    sum(abs_error) as abs_error_total,
    sum(abs_error) / nullif(sum(abs(actual)), 0) as wape,
    avg(abs_pct_error) as mape
from {{ ref('fct_forecast_vs_actual') }}
where week_start is not null  -- an integer period index has no calendar week
group by use_case, key_id, run_date, kind, week_start
