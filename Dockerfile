# syntax=docker/dockerfile:1
#
# One image for every binary of the fleet: the four workers, loadgen and
# dlq-tool. The command chooses one:
#   docker build -t fleet:local .
#   docker run --rm fleet:local order-worker
#   docker run --rm fleet:local dlq-tool list --json
#
# Stages: `chef` (the toolchain and cargo-chef), `planner` (the dependency
# recipe: manifests and lock file only), `builder` (dependencies first, in a
# layer that stays cached until Cargo.toml or Cargo.lock change; then the
# workspace), and the runtime: Debian slim, CA certificates, a non-root user.

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# Keep symbol names (readable panics), drop the rest of the debug info.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
COPY --from=planner /src/recipe.json recipe.json
# The cached dependency layer.
RUN cargo chef cook --release --locked --recipe-path recipe.json -p fleet-workers -p dlq-tool
COPY . .
# Every binary the image ships (tests/tests/it/deploy.rs checks this list
# against the [[bin]] targets of workers/ and dlq-tool/).
ARG BINARIES="order-worker inventory-worker payment-worker notification-worker loadgen dlq-tool"
RUN cargo build --release --locked -p fleet-workers -p dlq-tool --bins \
    && mkdir -p /out \
    && for binary in ${BINARIES}; do cp "target/release/${binary}" /out/; done

# busybox (static) provides `wget` for the compose healthchecks.
FROM busybox:1.37.0-musl AS busybox

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 fleet \
    && useradd --system --uid 10001 --gid fleet --no-create-home --shell /usr/sbin/nologin fleet
COPY --from=busybox /bin/busybox /usr/local/bin/busybox
COPY --from=builder /out/ /usr/local/bin/
# The compiled-in config/*.toml are the defaults; FLEET__SECTION__KEY,
# DATABASE_URL, AMQP_URL and REDIS_URL override them.
ENV FLEET__HTTP__HOST=0.0.0.0 \
    FLEET__HTTP__PORT=8080
EXPOSE 8080
USER 10001:10001
# Workers drain on SIGTERM (worker.shutdown_timeout_ms) and exit 0.
STOPSIGNAL SIGTERM
CMD ["dlq-tool", "--help"]
