# syntax=docker/dockerfile:1.7
# The slim image for everything but the GPU runner: `ducks worker`, `ducks bots …`, `ducks api`.
#
#   docker build -f docker/ducks.Dockerfile -t ducks:dev .
#
# Bases are pinned by version; pin them by digest in your registry for reproducible builds.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in a layer of their own (see runner.Dockerfile).
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
 && cargo build --release --locked -p ducks \
 && rm -rf queue/src runner/src cli/src

COPY queue queue
COPY runner runner
COPY cli cli
RUN touch queue/src/lib.rs runner/src/lib.rs cli/src/main.rs \
 && cargo build --release --locked -p ducks

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 ducks && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ducks
COPY --from=build /src/target/release/ducks /usr/local/bin/ducks
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/ducks"]
CMD ["--help"]
