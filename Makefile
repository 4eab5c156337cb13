.PHONY: test demo setup wasm

# Setup, fmt, clippy (native + wasm32-wasip1), native tests, the .wasm, end-to-end tests.
test:
	scripts/test.sh

# Static-mode demo: echo upstream + Envoy with envoy/static-demo.yaml, in the foreground.
demo:
	scripts/demo.sh

setup:
	scripts/setup.sh

wasm:
	scripts/build-wasm.sh
