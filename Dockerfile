# The `shoal` binary in a small Debian 12 image. Used by docker-compose.yml.
#
# From source (needs the rust and debian images from a registry):
#   docker build -t shoal .
#   docker run --rm -p 7700:7700 shoal dev --api 0.0.0.0:7700 --insecure-no-auth
# A first build compiles RocksDB and Polars from source (30-45 minutes on
# 2 cores); the cache mounts keep later builds incremental.
#
# Without a registry, from a binary built on a Debian 12 host and a base
# image made with debootstrap: scripts/docker-image (stage `prebuilt`).

ARG BASE=debian:bookworm-slim

FROM rust:1-bookworm AS build
# The same build dependencies scripts/setup installs on a Debian 12 host.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shoal \
    && cp target/release/shoal /usr/local/bin/shoal

FROM ${BASE} AS runtime
# curl: the compose file's health check asks GET /ready. (A base made by
# scripts/docker-image has it already.)
RUN command -v curl >/dev/null \
    || (apt-get update \
        && apt-get install -y --no-install-recommends ca-certificates curl \
        && rm -rf /var/lib/apt/lists/*)
ENV SHOAL_DATA_DIR=/data
VOLUME /data
# API (HTTP, also OTLP/HTTP and _bulk), RPC, gossip, OTLP/gRPC, OTLP/HTTP.
EXPOSE 7700 7701 7702/udp 4317 4318
ENTRYPOINT ["shoal"]
# A development node: reachable through the published port, without tokens
# (docker-compose.yml shows a cluster with access control).
CMD ["dev", "--api", "0.0.0.0:7700", "--insecure-no-auth"]

# A binary built outside, copied from the build context (scripts/docker-image).
FROM runtime AS prebuilt
COPY shoal /usr/local/bin/shoal

FROM runtime
COPY --from=build /usr/local/bin/shoal /usr/local/bin/shoal
