"""The real-time scoring service (`mmp serve`): per-key production models loaded on demand.

Nothing here imports Dagster or MLflow: the registry is read with SQLAlchemy straight from
MLflow's tables, models are loaded with skops after their SHA-256 is checked, and features
are built by the same ``core`` code the batch ``predictions`` stage uses. See docs/serving.md.
"""
