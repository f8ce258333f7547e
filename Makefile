# The two commands a newcomer needs are `make demo` and `make test`.
# Each installs what a fresh machine lacks first (scripts/ensure-tools).

CARGO ?= cargo

.PHONY: demo test lint bench-queue bench-runner bench-worker bench-kube bench-fanout bench-api bench-discord bench-twitch

# The real clients the suite drives the API with (tests/python/requirements.txt), installed once
# into a virtual environment the build ignores; a change of the pins installs them again.
PY_VENV := target/py

$(PY_VENV)/.installed: tests/python/requirements.txt
	@scripts/ensure-tools python
	python3 -m venv $(PY_VENV)
	$(PY_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

## Draws one image end to end on this machine: a redis-server child, S3 inside the process, a
## worker with the local launcher and tiny-sd (which draws noise). Prints the link and the file.
demo:
	@scripts/ensure-tools redis
	$(CARGO) run --release --locked -q -p ducks -- demo "a rubber duck flying over the clouds"

## Runs the whole suite: unit tests and the end-to-end suite against real redis-server processes.
test: $(PY_VENV)/.installed
	@scripts/ensure-tools redis chromium
	# The end-to-end suite runs the real `ducks` binary, which `cargo test` alone does not build;
	# building every target keeps the features the same as the test run, so nothing builds twice.
	$(CARGO) build --workspace --all-targets --locked
	$(CARGO) test --workspace --locked

## What CI's reviewers also expect to be clean.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## The queue benchmark, DUCKS beside BullMQ on one redis-server (see BENCHMARKS.md).
bench-queue:
	@scripts/ensure-tools redis node
	@[ -d bench/bullmq/node_modules ] || npm ci --prefix bench/bullmq --no-audit --no-fund
	$(CARGO) bench -p ducks-tests --bench queue --locked

## tiny-sd timings and runner start-up, cold and warm cache (see BENCHMARKS.md).
bench-runner:
	$(CARGO) build --release --locked -p ducks
	$(CARGO) bench -p ducks-tests --bench runner --locked

## The worker's own overhead with an instant launcher, and its memory (see BENCHMARKS.md).
bench-worker:
	@scripts/ensure-tools redis
	$(CARGO) bench -p ducks-tests --bench worker --locked

## 1,000 jobs through the Kubernetes API simulator: DUCKS' launcher beside a naive one.
bench-kube:
	@scripts/ensure-tools redis
	$(CARGO) bench -p ducks-tests --bench kube --locked

## 5,000 job watchers through one EventTail beside one XREAD connection per watcher.
bench-fanout:
	@scripts/ensure-tools redis
	$(CARGO) bench -p ducks-tests --bench fanout --locked

## The HTTP API: POST /v1/jobs beside Queue::submit, 5,000 event streams, images.generate's
## overhead over its job; `ducks api` runs as the release binary.
bench-api:
	@scripts/ensure-tools redis
	$(CARGO) build --release --locked -p ducks
	$(CARGO) bench -p ducks-tests --bench api --locked

## The Discord bot: 500 interactions at once through the HTTP endpoint and the gateway, REST
## requests per job, RSS; `ducks bots discord` runs as the release binary.
bench-discord:
	@scripts/ensure-tools redis
	$(CARGO) build --release --locked -p ducks
	$(CARGO) bench -p ducks-tests --bench discord --locked

## The Twitch bot: 1,000 `!imagine` in 10 s against the chat simulator, acknowledgement latency,
## lines per 30 s against Twitch's limit, results delivered; `ducks bots twitch` runs as the
## release binary.
bench-twitch:
	@scripts/ensure-tools redis
	$(CARGO) build --release --locked -p ducks
	$(CARGO) bench -p ducks-tests --bench twitch --locked
