# syntax=docker/dockerfile:1.7
# The sluice-worker image: built with the `dist` profile, run as uid 65532 on distroless cc.
#   docker build -f images/worker.Dockerfile -t ghcr.io/sluice-dev/sluice-worker:0.1.0 .
# RocksDB and librdkafka are compiled from source and linked in statically; the shared libraries
# the binary still needs beyond what distroless cc has (libz, libssl, libcrypto) are copied from
# the build stage, which runs the same Debian release. Base images: see operator.Dockerfile.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# What e2e/env/deps.sh installs for a local build, plus a C/C++ toolchain for RocksDB and
# librdkafka (the slim image has only gcc). Versions come with the pinned Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config libssl-dev zlib1g-dev libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile dist -p sluice-worker --bin sluice-worker \
 && install -D -m 0755 target/dist/sluice-worker /out/sluice-worker
# Shared libraries to bring along: everything the binary links except glibc and the GCC runtime,
# which the runtime image has in the same versions. Into a directory of their own, found through
# LD_LIBRARY_PATH, so nothing depends on how the runtime image lays out /lib and /usr/lib.
RUN mkdir -p /rootfs/usr/local/lib/sluice /rootfs/var/lib/sluice \
 && ldd /out/sluice-worker | awk '/=> \// { print $3 }' \
    | grep -Ev '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+)\.so' \
    | xargs -r cp -L -t /rootfs/usr/local/lib/sluice \
 && ls -l /rootfs/usr/local/lib/sluice

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="sluice-worker" \
      org.opencontainers.image.description="Runs the partition tasks of a Sluice StreamJob" \
      org.opencontainers.image.source="https://github.com/sluice-dev/sluice" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rootfs/usr/local/lib/sluice /usr/local/lib/sluice
ENV LD_LIBRARY_PATH=/usr/local/lib/sluice
# The state directory (the pod mounts its PersistentVolume here) owned by the runtime user.
COPY --from=build --chown=65532:65532 /rootfs/var/lib/sluice /var/lib/sluice
COPY --from=build /out/sluice-worker /usr/local/bin/sluice-worker
# Writes only /var/lib/sluice (volume) and /tmp (emptyDir): runs with a read-only root filesystem.
USER 65532:65532
ENV SLUICE_STATE_DIR=/var/lib/sluice
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice-worker"]
CMD ["run"]
