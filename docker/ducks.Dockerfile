# syntax=docker/dockerfile:1.7
# The slim image for everything but the GPU runner: `ducks worker`, `ducks bots …`, `ducks api`.
#
#   docker build -f docker/ducks.Dockerfile -t ducks:dev .
#
# Needs BuildKit (Docker's default builder since 23.0) for the cache mounts.
# Bases are pinned by version; pin them by digest in your registry for reproducible builds.

FROM rust:1.95.0-slim-bookworm AS build
# Nothing to install. The slim image already has gcc and libc6-dev (Rust needs them to link), and
# that is all the C this build compiles: aws-lc-sys 0.47 (under rustls) builds AWS-LC with its cc
# builder, not CMake, on x86_64 and aarch64 Linux; ring and psm compile a little C and assembly.
# No pkg-config on purpose, so aws-lc-sys never goes looking for a system libcrypto.
WORKDIR /src
# The whole workspace, so a new member, source file or bench needs no edit here. .dockerignore keeps
# out target/, .git/ and what no build reads; tests/tests/it/docker.rs checks that this context
# still holds every member and every declared target.
COPY . .
# With BuildKit cache mounts, the registry and target/ last from one build to the next, so editing
# the code does not rebuild candle and the AWS SDK. That replaces the old layer of empty stub sources.
# The mount is gone once this RUN ends, so the binary is copied out in the same step. Each image has
# its own target/ id: the CUDA image uses another OS and C toolchain, which cargo's fingerprints
# do not see.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,id=ducks-target,target=/src/target \
    cargo build --release --locked -p ducks \
 && cp target/release/ducks /usr/local/bin/ducks

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 ducks && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ducks
COPY --from=build /usr/local/bin/ducks /usr/local/bin/ducks
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/ducks"]
CMD ["--help"]
