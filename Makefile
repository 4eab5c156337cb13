.PHONY: test demo setup wasm

# Setup, fmt, clippy (native + wasm32-wasip1), native tests, the .wasm, end-to-end tests.
test:
	scripts/test.sh

# Live demo: control plane seeded from demo/catalogue.yaml, echo upstream, Envoy; foreground.
# `scripts/demo.sh --check` runs its walkthrough and asserts every answer.
# `TOLLGATE_DEMO_FLEET=1 make demo` adds redis-server and a second Envoy sharing every limit.
demo:
	scripts/demo.sh

setup:
	scripts/setup.sh

wasm:
	scripts/build-wasm.sh
