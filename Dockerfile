# The tollgate image for docker-compose.yml: the `tollgate` binary (control plane and CLI) and
# the filter, built from source. The filter is copied into the Envoy container by the compose
# file's one-shot `wasm` service; Envoy itself runs from the official image.

FROM rust:1.95.0-bookworm AS build
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tollgate-control-plane \
 && cargo build --release --locked --target wasm32-wasip1 -p tollgate-filter

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/tollgate tollgate \
 && install -d -o tollgate -m 0700 /var/lib/tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY --from=build /src/target/wasm32-wasip1/release/tollgate_filter.wasm /usr/local/share/tollgate/tollgate.wasm
COPY demo/catalogue.yaml /usr/local/share/tollgate/catalogue.yaml
USER tollgate
ENV TOLLGATE_DATA_DIR=/var/lib/tollgate
VOLUME /var/lib/tollgate
EXPOSE 7100
ENTRYPOINT ["tollgate"]
CMD ["serve", "--listen", "0.0.0.0:7100"]
