# postern: build with the Rust toolchain, run on slim Debian as a non-root user.
#   docker build -t postern .
#   docker run -d --name postern -p 2222:2222 -p 6432:6432 -p 8443:8443 \
#     -v postern-data:/data postern
#   docker exec postern postern admin user add alice      # admin commands, same data dir
# The data volume must be writable by uid 10001 (a named volume is set up for it; a host
# directory: chown 10001 DIR, mode 0700).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY web/package.json web/package-lock.json web/console.js web/console.css ./web/
RUN npm ci --no-audit --no-fund --prefix web
COPY src ./src
COPY migrations ./migrations
COPY vendor ./vendor
COPY bench ./bench
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin postern \
 && mkdir -p /data && chown postern:postern /data && chmod 0700 /data
COPY --from=build /src/target/release/postern /usr/local/bin/postern
COPY config/postern.toml /etc/postern/postern.toml
USER postern
VOLUME ["/data"]
# The config is read from /etc/postern/postern.toml (mount your own over it). Set its
# `[tls] hostnames` to the names clients use to reach the container before the first
# start (the certificate is issued for them); flags and these variables override it.
ENV POSTERN_CONFIG=/etc/postern/postern.toml \
    POSTERN_DATA_DIR=/data \
    POSTERN_SSH_LISTEN=0.0.0.0:2222 \
    POSTERN_PG_LISTEN=0.0.0.0:6432 \
    POSTERN_API_LISTEN=0.0.0.0:8443
EXPOSE 2222 6432 8443
# Healthy when the API answers over TLS with postern's own certificate (made in /data
# at first start for `[tls] hostnames`, which must keep "localhost" for this check; with
# `[tls] cert_file` of your own, point --cacert at your CA).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD curl -fsS --cacert /data/tls/ca.crt https://localhost:8443/v1/health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["postern"]
CMD ["serve"]
