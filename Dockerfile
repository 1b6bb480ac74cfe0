# Strategy@Home portal image: the web portal (gunicorn) and the background cluster (qcluster)
# run from this one image with different commands; deploy/compose.yaml wires them up.
#
#   docker build -t strategy-at-home .
#   docker run --env-file deploy/.env strategy-at-home                      # the portal
#   docker run --env-file deploy/.env strategy-at-home python manage.py qcluster
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=portal.settings \
    GUNICORN_BIND=0.0.0.0:8000 \
    MEDIA_ROOT=/data/media \
    STATIC_ROOT=/app/var/static \
    WORKER_WHEEL_DIR=/app/var/dist \
    NUMBA_CACHE_DIR=/app/var/numba-cache

RUN groupadd --system strategy \
    && useradd --system --gid strategy --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin strategy

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or the
# worker client (whose version the package takes) change.
COPY pyproject.toml README.md ./
COPY worker_client ./worker_client
RUN pip install --upgrade pip \
    && pip install ".[portal]" \
    && pip wheel --no-deps --wheel-dir /app/var/dist . \
    && rm -rf build *.egg-info

COPY manage.py ./
COPY portal ./portal
COPY apps ./apps
COPY templates ./templates
COPY static ./static
COPY deploy ./deploy

# Static files: hashed, compressed and listed in a manifest at build time (whitenoise serves
# them). The settings need a secret to import; this one exists only in this build step.
RUN DJANGO_SECRET_KEY=collectstatic-only-not-a-secret DJANGO_ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --noinput --verbosity 1 \
    && mkdir -p /data/media /app/var/numba-cache \
    && chown -R strategy:strategy /data /app/var

USER strategy
VOLUME ["/data/media"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "deploy/healthcheck.py", "portal"]

CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py"]
