# syntax=docker/dockerfile:1.7
# The sluice-operator image: built with the `dist` profile (release + fat LTO, one codegen unit,
# stripped), run as uid 65532 on distroless cc (glibc, libgcc, CA certificates; no shell).
#   docker build -f images/operator.Dockerfile -t ghcr.io/sluice-dev/sluice-operator:0.1.0 .
# Base images are pinned to a toolchain release and a Debian release (12, bookworm, in both
# stages so the binary's glibc matches the runtime's); release builds pin them by digest with
# --build-arg RUST_IMAGE=...@sha256:... --build-arg RUNTIME_IMAGE=...@sha256:...
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The workspace is built from the lock file; registry and target caches survive between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile dist -p sluice-operator --bin sluice-operator \
 && install -D -m 0755 target/dist/sluice-operator /out/sluice-operator

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="sluice-operator" \
      org.opencontainers.image.description="Reconciles Sluice StreamJobs into worker StatefulSets" \
      org.opencontainers.image.source="https://github.com/sluice-dev/sluice" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/sluice-operator /usr/local/bin/sluice-operator
# Any non-root uid works; the chart runs 65532 with a read-only root filesystem.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice-operator"]
CMD ["run"]
