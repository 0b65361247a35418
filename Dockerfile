# wsgate in a container: a release build, then a small runtime image that runs it as a
# non-root user with the config mounted read-only.
#
#   docker build -t wsgate --build-arg WSGATE_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
#   docker run --rm -p 443:443 -v "$PWD/wsgate.toml:/etc/wsgate/wsgate.toml:ro" wsgate
#
# Steps and notes: docs/operations.md, "Running on a host".

FROM rust:1-bookworm AS build
# .git is not sent to the builder (.dockerignore), so build.rs cannot ask git: the commit for
# `wsgate --version` comes in as an argument, and SOURCE_DATE_EPOCH (if given) fixes the date.
ARG WSGATE_GIT_COMMIT=unknown
ARG SOURCE_DATE_EPOCH
WORKDIR /src
COPY . .
# The image has the C compiler and make that aws-lc-sys and jemalloc need. The cache mounts
# keep the registry and target/ between builds on one machine.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wsgate \
    && install -m 0755 target/release/wsgate /usr/local/bin/wsgate

FROM debian:bookworm-slim
# CA certificates for wss:// backends verified against the system roots. Not pinned: the
# point of the package is to track Debian's current roots.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 wsgate \
    && useradd --system --uid 10001 --gid wsgate --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin wsgate \
    && mkdir -p /etc/wsgate
COPY --from=build /usr/local/bin/wsgate /usr/local/bin/wsgate
# Docker lets an unprivileged user bind ports below 1024 inside the container
# (net.ipv4.ip_unprivileged_port_start=0), so 443 needs no capability.
# Numeric, so that `docker run --user`-style checks and Kubernetes' runAsNonRoot can see it.
USER 10001:10001
EXPOSE 443
# SIGTERM (docker stop) drains: give it more than [shutdown] grace, e.g. docker stop -t 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsgate"]
CMD ["run", "--config", "/etc/wsgate/wsgate.toml"]
