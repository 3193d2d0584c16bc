# syntax=docker/dockerfile:1
# One image for every townsquare service; the command picks it:
#   docker run IMAGE up                 all-in-one (laptop)
#   docker run IMAGE ingest             control API + RTMP + WHIP + packager + origin
#   docker run IMAGE origin             standalone origin reading the store
#   docker run IMAGE edge               edge cache (upstream from TOWNSQUARE_EDGE_UPSTREAM)
# No apt ffmpeg: the PyAV wheel bundles its FFmpeg libraries (they need only glibc,
# libstdc++ and zlib, which the slim base already has).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/townsquare
WORKDIR /src
# Dependencies first so that code edits don't rebuild them: install the project's
# requirements from pyproject, then the project itself without touching them again.
COPY pyproject.toml README.md ./
RUN mkdir -p townsquare packager ingest edge \
 && touch townsquare/__init__.py packager/__init__.py ingest/__init__.py edge/__init__.py \
 && /opt/townsquare/bin/pip install --only-binary=:all: . \
 && /opt/townsquare/bin/pip uninstall -y townsquare
COPY townsquare ./townsquare
COPY packager ./packager
COPY ingest ./ingest
COPY edge ./edge
RUN /opt/townsquare/bin/pip install --no-deps . \
 && /opt/townsquare/bin/townsquare --help > /dev/null

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
#checkov:skip=CKV_DOCKER_2:One image runs several services on different ports; compose.yaml and the ECS task definitions give each its own /healthz check.
LABEL org.opencontainers.image.title="townsquare" \
      org.opencontainers.image.description="Live audio rooms over LL-HLS: ingest, packager, origin and edge in one image."
RUN groupadd --system --gid 10001 townsquare \
 && useradd --system --uid 10001 --gid townsquare --home-dir /data --shell /usr/sbin/nologin townsquare \
 && mkdir -p /data \
 && chown townsquare:townsquare /data
COPY --from=build /opt/townsquare /opt/townsquare
ENV PATH=/opt/townsquare/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOWNSQUARE_HOST=0.0.0.0 \
    TOWNSQUARE_DATA_DIR=/data
WORKDIR /data
VOLUME ["/data"]
USER townsquare
# 8000 control API + WHIP, 8001 origin, 1935 RTMP, 8080 edge.
EXPOSE 8000 8001 1935 8080
ENTRYPOINT ["townsquare"]
CMD ["up"]
