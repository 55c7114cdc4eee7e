# syntax=docker/dockerfile:1
# The `formstream` binary in a small runtime image (docker-compose.yml and deploy/k8s/ run it).
#
# Stage 1 builds with the full Rust toolchain; stage 2 holds only the binary and the shared
# libraries librdkafka links at run time (OpenSSL for SSL/SASL, libcurl for OAUTHBEARER/OIDC), and
# runs as an unprivileged user. Every component is a subcommand: `gateway`, `process <name>`,
# `topics create`, `replay`.

# The workspace's rust-version is 1.90; bookworm matches the runtime image's libraries.
FROM rust:1.90-bookworm AS builder
# librdkafka's SSL and OIDC support build against these headers (they are also what .ci/run installs).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev libcurl4-openssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds (librdkafka alone is a
# minute of C compilation); the binary is copied out of the cache before the stage ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin formstream \
 && cp target/release/formstream /usr/local/bin/formstream

FROM debian:bookworm-slim AS runtime
# libssl3 and libcurl4: librdkafka's TLS and OIDC; ca-certificates: verifying managed clusters'
# certificates; curl: the compose healthchecks (the binary serves /healthz and /readyz).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 libcurl4 ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 formstream \
 && useradd --system --uid 10001 --gid formstream --home-dir /var/lib/formstream --create-home formstream
COPY --from=builder /usr/local/bin/formstream /usr/local/bin/formstream
# A numeric user, so Kubernetes' runAsNonRoot can verify it without resolving the name.
USER 10001:10001
WORKDIR /var/lib/formstream
# In a container the listeners must face the network, not loopback (the binary's local defaults).
ENV FORMSTREAM_GATEWAY_LISTEN=0.0.0.0:8080 \
    FORMSTREAM_METRICS_LISTEN=0.0.0.0:9464 \
    FORMSTREAM_LOG_FORMAT=json
EXPOSE 8080 9464
# tini forwards SIGTERM to formstream (PID 1 would ignore it), so a stop drains and commits.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/formstream"]
CMD ["--help"]
