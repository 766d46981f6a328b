-- How accurate a use case's models are, per run date: the distribution over keys of the
-- candidates' holdout value of the use case's own metric (the one run_summary names), and how
-- many keys beat their naive baseline on the same holdout (skill > 0, docs/evaluation.md).
with primary_metric as (
    select distinct
        use_case,
        run_date,
        metric_name
    from {{ ref('stg_run_summary') }}
),

vals as (
    select
        m.use_case,
        m.run_date,
        m.metric_name,
        m.higher_is_better,
        m.key_id,
        m.metric_value
    from {{ ref('stg_key_metrics') }} as m
    inner join primary_metric as pm
        on pm.use_case = m.use_case
        and pm.run_date = m.run_date
        and pm.metric_name = m.metric_name
    where m.model_role = 'candidate'
),

stats as (
    select
        use_case,
        run_date,
        metric_name,
        max(higher_is_better) as higher_is_better,
        cast(count(*) as {{ dbt.type_bigint() }}) as n_keys,
        cast(count(metric_value) as {{ dbt.type_bigint() }}) as n_keys_with_value,
        min(metric_value) as metric_min,
        avg(metric_value) as metric_mean,
        max(metric_value) as metric_max
    from vals
    group by use_case, run_date, metric_name
),

skill as (
    select
        use_case,
        run_date,
        cast(count(metric_value) as {{ dbt.type_bigint() }}) as n_keys_with_baseline,
        cast(sum(case when metric_value > 0 then 1 else 0 end) as {{ dbt.type_bigint() }}) as n_keys_beating_baseline,
        avg(metric_value) as skill_mean
    from {{ ref('stg_key_metrics') }}
    where model_role = 'candidate' and metric_name = 'skill'
    group by use_case, run_date
),

pct as (
    {{ mmp_percentiles('vals', 'metric_value', ['use_case', 'run_date', 'metric_name'], [0.1, 0.5, 0.9]) }}
)

select
    s.use_case,
    s.run_date,
    s.metric_name,
    s.higher_is_better,
    s.n_keys,
    s.n_keys_with_value,
    s.metric_min,
    pct.p10 as metric_p10,
    pct.p50 as metric_p50,
    pct.p90 as metric_p90,
    s.metric_max,
    s.metric_mean,
    coalesce(sk.n_keys_with_baseline, 0) as n_keys_with_baseline,
    coalesce(sk.n_keys_beating_baseline, 0) as n_keys_beating_baseline,
    cast(sk.n_keys_beating_baseline as {{ mmp_type_double() }})
        / nullif(sk.n_keys_with_baseline, 0) as share_beating_baseline,
    sk.skill_mean
from stats as s
left join pct
    on pct.use_case = s.use_case
    and pct.run_date = s.run_date
    and pct.metric_name = s.metric_name
left join skill as sk
    on sk.use_case = s.use_case
    and sk.run_date = s.run_date
