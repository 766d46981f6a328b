{#- Small cross-database helpers. Each has a default implementation (DuckDB, PostgreSQL) and a
    sqlserver__ one, which dbt also dispatches to for Synapse and Fabric adapters built on it. -#}

{#- An 8-byte float. dbt.type_float() is `float`, which is 4 bytes on DuckDB. -#}
{% macro mmp_type_double() %}
    {{- return(adapter.dispatch('mmp_type_double', 'many_models_platform')()) -}}
{% endmacro %}

{% macro default__mmp_type_double() %}double precision{% endmacro %}

{% macro sqlserver__mmp_type_double() %}float{% endmacro %}


{#- Monday of the ISO week of a date or timestamp, as a date. dbt-sqlserver's date_trunc('week')
    counts Sunday boundaries, so a Sunday would land on the following Monday: do it by hand there
    (1900-01-01, day 0, was a Monday). -#}
{% macro mmp_week_start(column) %}
    {{- return(adapter.dispatch('mmp_week_start', 'many_models_platform')(column)) -}}
{% endmacro %}

{% macro default__mmp_week_start(column) -%}
    cast({{ dbt.date_trunc('week', column) }} as date)
{%- endmacro %}

{% macro sqlserver__mmp_week_start(column) -%}
    cast(dateadd(day, -(datediff(day, 0, {{ column }}) % 7), {{ column }}) as date)
{%- endmacro %}


{#- 1 when a larger value of the metric is better (r2 and the label metrics), else 0. -#}
{% macro mmp_higher_is_better(metric_column) -%}
    case when {{ metric_column }} in ('r2', 'accuracy', 'f1', 'precision', 'recall', 'score_stability', 'skill') then 1 else 0 end
{%- endmacro %}
