# syntax=docker/dockerfile:1.7
# The runner image: `ducks runner` with candle's CUDA backend, run as one short-lived pod per job.
#
#   docker build -f docker/runner.Dockerfile --build-arg CUDA_COMPUTE_CAP=90 -t ducks-runner:dev .
#
# CUDA_COMPUTE_CAP is the GPU generation the kernels are compiled for (80: A100, 86: A10/RTX 30,
# 89: L4/L40/RTX 40, 90: H100/H200); no GPU is visible during `docker build`, so it must be given.
# Needs BuildKit (Docker's default builder since 23.0) for the cache mounts.
# Bases are pinned by version; pin them by digest in your registry for reproducible builds.

ARG CUDA_VERSION=12.4.1
ARG UBUNTU=ubuntu22.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG CUDA_VERSION
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:${PATH}
# curl and ca-certificates fetch rustup. build-essential is the C and C++ compiler that nvcc needs as
# its host compiler (candle-kernels) and that aws-lc-sys, ring and psm compile with; aws-lc-sys 0.47
# uses its cc builder here, so no CMake. No pkg-config, so aws-lc-sys never looks for a system
# libcrypto.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
WORKDIR /src
# The whole workspace, so a new member, source file or bench needs no edit here. .dockerignore keeps
# out target/, .git/ and what no build reads; tests/tests/it/docker.rs checks that this context
# still holds every member and every declared target.
COPY . .
# With BuildKit cache mounts, the registry and target/ last from one build to the next, so editing
# the code does not rebuild candle's kernels and the AWS SDK. That replaces the old layer of empty
# stub sources. The mount is gone once this RUN ends, so the binary is copied out in the same step.
# target/ has one cache per CUDA version and compute capability, and none shared with the slim
# image, because cargo's fingerprints see neither the toolkit nor the OS and C toolchain.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,id=ducks-runner-target-${CUDA_VERSION}-sm${CUDA_COMPUTE_CAP},target=/src/target \
    cargo build --release --locked -p ducks --features cuda \
 && cp target/release/ducks /usr/local/bin/ducks

# The runtime flavour carries cuBLAS and cuRAND; the driver comes from the node.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
RUN groupadd --gid 10001 ducks && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ducks
COPY --from=build /usr/local/bin/ducks /usr/local/bin/ducks
# Matches the Job's securityContext (runAsNonRoot, runAsUser 10001, read-only root filesystem):
# the runner writes only to its cache volume, /tmp and the termination log.
USER 10001:10001
# The same entrypoint as docker/ducks.Dockerfile: the worker's Jobs run `ducks runner` by their
# container args, so either image can run a runner pod (the slim one on clusters without GPUs).
ENTRYPOINT ["/usr/local/bin/ducks"]
CMD ["runner"]
