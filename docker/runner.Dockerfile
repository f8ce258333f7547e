# syntax=docker/dockerfile:1.7
# The runner image: `ducks runner` with candle's CUDA backend, run as one short-lived pod per job.
#
#   docker build -f docker/runner.Dockerfile --build-arg CUDA_COMPUTE_CAP=90 -t ducks-runner:dev .
#
# CUDA_COMPUTE_CAP is the GPU generation the kernels are compiled for (80: A100, 86: A10/RTX 30,
# 89: L4/L40/RTX 40, 90: H100/H200); no GPU is visible during `docker build`, so it must be given.
# Bases are pinned by version; pin them by digest in your registry for reproducible builds.

ARG CUDA_VERSION=12.4.1
ARG UBUNTU=ubuntu22.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:${PATH}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/* \
 && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
WORKDIR /src

# Dependencies first, in a layer of their own: the manifests with empty sources, so editing the
# code does not rebuild candle and the AWS SDK.
COPY Cargo.toml Cargo.lock ./
COPY queue/Cargo.toml queue/
COPY runner/Cargo.toml runner/
COPY cli/Cargo.toml cli/
COPY tests/Cargo.toml tests/
RUN for crate in queue runner tests; do mkdir -p $crate/src && : > $crate/src/lib.rs; done \
 && mkdir -p cli/src tests/tests/it tests/benches \
 && echo 'fn main() {}' > cli/src/main.rs \
 && : > tests/tests/it/main.rs \
 && echo 'fn main() {}' > tests/benches/queue.rs \
 && cargo build --release --locked -p ducks --features cuda \
 && rm -rf queue/src runner/src cli/src

COPY queue queue
COPY runner runner
COPY cli cli
RUN touch queue/src/lib.rs runner/src/lib.rs cli/src/main.rs \
 && cargo build --release --locked -p ducks --features cuda

# The runtime flavour carries cuBLAS and cuRAND; the driver comes from the node.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
RUN groupadd --gid 10001 ducks && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ducks
COPY --from=build /src/target/release/ducks /usr/local/bin/ducks
# Matches the Job's securityContext (runAsNonRoot, runAsUser 10001, read-only root filesystem):
# the runner writes only to its cache volume, /tmp and the termination log.
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/ducks", "runner"]
