# The `formstream` binary in a small runtime image (docker-compose.yml and deploy/k8s/ run it).
# Every component is a subcommand: `gateway`, `process <name>`, `topics create`, `replay`.
#
# The binary is the one cargo built on the host, copied in: no Rust toolchain in any image, and no
# BuildKit syntax, so Docker's legacy builder (Debian's docker.io) builds it as well as BuildKit.
# It goes in without its debug sections, as deploy/split-debuginfo.sh ships it (226 MB -> 48 MB;
# its symbols stay, so a panic's backtrace still names every function):
#   cargo build --release --bin formstream
#   deploy/split-debuginfo.sh target/release/formstream target/release/image
#   docker build --network host -t formstream:local .
# The debug file stays on the host (target/release/image/formstream.debug): mounted at
# /usr/lib/debug/usr/local/bin/formstream.debug, it gives backtraces their file:line again.
# deploy/docker/build.sh does all of this from any binary and makes the base from Debian packages
# where no registry is reachable (docs/operations.md).
#
# BASE must have the glibc the binary was built against (bookworm: glibc 2.36); on a newer host,
# use the matching base, and RUNTIME_PACKAGES with its library names (trixie: libssl3t64 libcurl4t64).
ARG BASE=debian:bookworm-slim

FROM ${BASE}
# libssl3 and libcurl4: librdkafka's TLS and OIDC (the only libraries the binary links beyond
# glibc); ca-certificates: verifying managed clusters' certificates; curl: the compose healthchecks
# (the binary serves /healthz and /readyz); tini: PID 1 that forwards SIGTERM and reaps.
# --error-on=any: an apt-get update that cannot reach the mirror fails the build here instead of
# installing nothing. One RUN, one layer: on the vfs storage driver every layer is a full copy.
ARG RUNTIME_PACKAGES="libssl3 libcurl4 ca-certificates curl tini"
RUN apt-get update --error-on=any \
 && apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES} \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 formstream \
 && useradd --system --uid 10001 --gid formstream --home-dir /var/lib/formstream --no-create-home formstream \
 && mkdir -p /var/lib/formstream/data \
 && chown -R 10001:10001 /var/lib/formstream
# A path inside the build context (.dockerignore admits only target/*/image/formstream; build.sh
# passes a context holding nothing but the binary). Last, so a new binary reuses the layers above.
ARG BINARY=target/release/image/formstream
COPY ${BINARY} /usr/local/bin/formstream

# A numeric user, so Kubernetes' runAsNonRoot can verify it without resolving the name.
USER 10001:10001
# Relative default paths (data/sms-outbox.jsonl, data/sheets) land in data/, which exists in the
# image owned by this user: a fresh named volume mounted there copies that ownership.
WORKDIR /var/lib/formstream
# In a container the listeners must face the network, not loopback (the binary's local defaults).
ENV FORMSTREAM_GATEWAY_LISTEN=0.0.0.0:8080 \
    FORMSTREAM_METRICS_LISTEN=0.0.0.0:9464 \
    FORMSTREAM_LOG_FORMAT=json
EXPOSE 8080 9464
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/formstream"]
CMD ["--help"]
