# The sluice image: the `sluice` binary and the demo's example apps (order-service,
# order-consumer, products-service) on a slim Debian, run as an unprivileged user.
#
#   docker build -t sluice .
#   docker run --rm sluice check --offline /etc/sluice/examples/generator.toml
#
# Stages: `builder` compiles in release; `runtime` is the image (the default target);
# `prebuilt` is the same image made from binaries built on the host and copied to
# target/compose-bin/, for machines with no registry to pull the Rust image from
# (scripts/compose-demo.sh).
FROM rust:1-bookworm AS builder
# etcd-client's build compiles etcd's protocol files.
RUN apt-get update -q && apt-get install -y -q --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice -p sluice-examples \
    && mkdir /out \
    && cp target/release/sluice target/release/order-service target/release/order-consumer \
        target/release/products-service /out/

FROM debian:bookworm-slim AS base
RUN apt-get update -q && apt-get install -y -q --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --home-dir /var/lib/sluice --create-home sluice
COPY examples/*.toml /etc/sluice/examples/
WORKDIR /var/lib/sluice
USER sluice
# The API server (/metrics, /health, /ready) of examples/*.toml.
EXPOSE 9464
ENTRYPOINT ["sluice"]
CMD ["--help"]

FROM base AS prebuilt
COPY target/compose-bin/ /usr/local/bin/

FROM base AS runtime
COPY --from=builder /out/ /usr/local/bin/
