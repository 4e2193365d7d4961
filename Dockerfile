# The forestream image: every service of docker-compose.yml runs `forestream ...` from it.
# Not built in CI (no Docker engine there); tests/unit/test_compose.py checks what it can statically.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The locked dependency set first (to the hash; a layer that survives source changes), then the
# project itself without resolving anything again.
COPY requirements.lock .
RUN pip install --require-hashes -r requirements.lock
COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 forestream \
    && mkdir -p /models /data /cache \
    && chown forestream:forestream /models /data /cache

# Named volumes mounted here start with this ownership, so the non-root user can write to them.
USER forestream
VOLUME ["/models", "/data", "/cache"]
ENV FORESTREAM_MODEL_STORE=/models \
    FORESTREAM_LOG_FORMAT=json

# No ENTRYPOINT: compose commands spell out `forestream ...` so a test can check them.
CMD ["forestream", "--help"]
