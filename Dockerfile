# tokenfarm: one image for the app, its one-shot migration and the operator commands.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/tokenfarm

RUN useradd --system --uid 10001 --home-dir /srv/tokenfarm --shell /usr/sbin/nologin tokenfarm
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
# Runtime dependencies only (no [dev] extra). Editable, so that the top-level migrations/ folder
# stays next to the package, where `tokenfarm migrate` looks for it.
RUN pip install -e . \
    && mkdir -p /srv/tokenfarm/data \
    && chown tokenfarm /srv/tokenfarm/data

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)" || exit 1
CMD ["tokenfarm", "serve", "--no-migrate", "--host", "0.0.0.0", "--port", "8000"]
