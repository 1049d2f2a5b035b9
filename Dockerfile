# tokenfarm: one image for the app and its one-shot migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/tokenfarm

RUN useradd --system --uid 10001 --home-dir /srv/tokenfarm tokenfarm
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
# Editable, so the top-level migrations/ folder stays next to the package.
RUN pip install -e . && mkdir -p /srv/tokenfarm/data && chown tokenfarm /srv/tokenfarm/data

USER tokenfarm
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["tokenfarm", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
