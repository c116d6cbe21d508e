# syntax=docker/dockerfile:1
#
# One image, both binaries: /usr/local/bin/rw-proxy and /usr/local/bin/writer-election
# (k8s/ runs each Deployment with its own `command`).
#
#   docker build -t microstream-rw:0.1.0 .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# The builder's Debian release must match the runtime's (glibc): bookworm <-> distroless debian12.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# cmake: libz-ng-sys (pulled in by pingora-core) builds zlib-ng with it. The rest of the C
# toolchain (cc, make) is in the rust image already.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: cargo reads every member's manifest even when building two packages.
# .dockerignore keeps target/ and .git/ out.
COPY . .
# Cache mounts keep the registry and the target dir between builds, so a source change rebuilds
# only our crates. The binaries are copied out because the cache mount vanishes after this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p rw-proxy -p writer-election \
    && install -D -m 0755 target/release/rw-proxy /out/rw-proxy \
    && install -D -m 0755 target/release/writer-election /out/writer-election

# glibc, libgcc and CA certificates, no shell, no package manager; runs as uid/gid 65532.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="microstream-rw" \
      org.opencontainers.image.description="rw-proxy (read/write splitting proxy) and writer-election for a single-writer storage cluster" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/rw-proxy /out/writer-election /usr/local/bin/
# Numeric, so the kubelet can verify runAsNonRoot without a passwd lookup.
USER 65532:65532
# rw-proxy traffic + admin; writer-election's topology API is also 8080 in its own pod.
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/rw-proxy"]
CMD ["--config", "/etc/rw-proxy/proxy.yaml"]
