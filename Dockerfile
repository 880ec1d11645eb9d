# vpiska: `python -m vpiska` on a slim Python, as a non-root user.
#
# Not built or run on the project's machines (they have no Docker engine); tests/test_docker.py
# runs this file's command, environment and health check outside Docker instead.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY vpiska ./vpiska
RUN pip install .

# The embedded store and media live under /data, the one writable place; a volume mounted
# there (or at /data/media) starts out owned by this user.
RUN useradd --system --uid 10001 --no-create-home vpiska \
    && mkdir -p /data/media \
    && chown -R vpiska /data
USER vpiska

ENV SERVER_HOST=0.0.0.0 \
    SERVER_PORT=5000 \
    DATA_DIR=/data \
    MEDIA_PATH=/data/media
VOLUME ["/data"]
EXPOSE 5000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['SERVER_PORT'], timeout=2)"]
# SIGTERM drains the rooms and closes sockets with 1001 (README "Shutdown").
STOPSIGNAL SIGTERM
CMD ["python", "-m", "vpiska"]
