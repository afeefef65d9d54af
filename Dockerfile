# postern: build with the Rust toolchain, run on slim Debian as a non-root user.
#   docker build -t postern .
#   docker run -p 2222:2222 -p 6432:6432 -p 8443:8443 -v postern-data:/data postern
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY vendor ./vendor
COPY bench ./bench
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin postern \
 && mkdir -p /data && chown postern:postern /data && chmod 0700 /data
COPY --from=build /src/target/release/postern /usr/local/bin/postern
COPY config/postern.toml /etc/postern/postern.toml
USER postern
VOLUME ["/data"]
ENV POSTERN_DATA_DIR=/data \
    POSTERN_SSH_LISTEN=0.0.0.0:2222 \
    POSTERN_PG_LISTEN=0.0.0.0:6432 \
    POSTERN_API_LISTEN=0.0.0.0:8443
EXPOSE 2222 6432 8443
STOPSIGNAL SIGTERM
ENTRYPOINT ["postern"]
CMD ["serve"]
