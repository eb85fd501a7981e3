# One image for every volcast service: docker-compose runs `volcast stream`, `volcast forecast`,
# `volcast refit` and (deploy/compose.offline.yml) `volcast replay` from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CPU index: a bare `torch` requirement pulls a CUDA build of several GB.
# 2.13.0 satisfies the project's torch range, so the project install below keeps it.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/volcast
COPY pyproject.toml README.md ./
COPY volcast ./volcast
COPY streamer ./streamer
COPY forecaster ./forecaster
RUN pip install . && python -c "import torch, volcast.cli; assert torch.__version__.startswith('2.13.0')"

# Settings (compose mounts the working copies over these) and the real recorded trades that
# `volcast replay` serves in the offline profile (provenance: tests/data/PROVENANCE.md).
COPY config.yml /etc/volcast/config.yml
COPY deploy/config.offline.yml /etc/volcast/config.offline.yml
COPY tests/data/binance_XRPETH_trades_2019-10-11_2019-10-13.csv.gz \
     tests/data/PROVENANCE.md \
     /opt/volcast/data/

# Not root: the model store is the only place the services write to on disk.
RUN useradd --system --uid 10001 --home-dir /var/lib/volcast --shell /usr/sbin/nologin volcast \
    && mkdir -p /var/lib/volcast/models \
    && chown -R volcast:volcast /var/lib/volcast
USER volcast
ENV VOLCAST_MODEL_DIR=/var/lib/volcast/models \
    VOLCAST_CONFIG=/etc/volcast/config.yml

CMD ["volcast", "--help"]
