# The alliance API image: FHIR R4, DICOMweb, the portal and the DICOM C-STORE receiver.
#   docker build -t alliance .
# Without any ALLIANCE_* settings the container runs embedded (SQLite and blobs under
# /app/var, lost with the container); docker-compose.yml gives it PostgreSQL and MinIO.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv holding the project and its runtime dependencies only ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that editing the code reuses this
# (slow) layer. Only [project].dependencies: the dev extra never enters the image.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# Then the source tree (.dockerignore keeps .venv, var, .git, caches and tests out) and
# the project itself; its dependencies are already there.
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && pip check

# ---- runtime ----
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ALLIANCE_WORKERS=2 \
    ALLIANCE_DICOM_PORT=11112

RUN groupadd --system --gid 10001 alliance \
    && useradd --system --uid 10001 --gid alliance --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin alliance \
    && mkdir -p /app/var \
    && chown -R alliance:alliance /app

COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/alliance-entrypoint
RUN chmod 0755 /usr/local/bin/alliance-entrypoint

# Working directory owned by the app user only so that the embedded default (./var) works
# for a quick `docker run`; with PostgreSQL and S3 nothing is written here.
WORKDIR /app
# Numeric, so that runtimes enforcing runAsNonRoot can check it.
USER 10001:10001

# 8000: HTTP (FHIR, DICOMweb, portal, /healthz, /readyz, /metrics); 11112: DICOM C-STORE.
EXPOSE 8000 11112

# Liveness only (/healthz): slim has no curl, so Python's urllib does the request; a non-2xx
# answer or no answer raises and exits non-zero. Readiness (/readyz) is docker-compose's.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# No arguments: migrate, seed the demo when ALLIANCE_DEMO is true, serve.
# With arguments (`docker run IMAGE alliance audit verify`): run those instead.
ENTRYPOINT ["/usr/local/bin/alliance-entrypoint"]
