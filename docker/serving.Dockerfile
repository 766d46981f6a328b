# The real-time scoring service (`mmp serve`, docs/serving.md). Build from the repository root:
#   docker build -f docker/serving.Dockerfile -t mmp-serving .
# It reads the production registry (read-only URI) and the production artifact root; it needs
# neither Dagster's instance nor write access anywhere.
FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY many_models_platform ./many_models_platform
RUN uv sync --frozen --no-dev

FROM python:3.11-slim-bookworm
# libgomp: LightGBM's OpenMP runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mmp \
    && useradd --system --uid 10001 --gid mmp --no-create-home mmp
WORKDIR /app
COPY --from=build --chown=root:root /app /app
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    MMP_HOME=/tmp/mmp \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    POLARS_MAX_THREADS=1
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["mmp", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD ["--workers", "2"]
