# The two commands a newcomer needs are `make demo` and `make test`.
# Each installs what a fresh machine lacks first (scripts/ensure-tools).

CARGO ?= cargo

.PHONY: demo test lint bench-queue bench-runner bench-worker bench-kube bench-fanout bench-api bench-discord bench-twitch bench-cpu

# The real clients the suite drives the API with (tests/python/requirements.txt), installed once
# into a virtual environment the build ignores; a change of the pins installs them again.
PY_VENV := target/py

$(PY_VENV)/.installed: tests/python/requirements.txt
	@scripts/ensure-tools python
	python3 -m venv $(PY_VENV)
	$(PY_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

## Draws one image end to end on this machine: a redis-server child, S3 inside the process, a
## worker with the local launcher. Prints the link and the file. MODEL=sd-turbo (or sdxl-turbo,
## sd15, sd21) imports that real model from the Hugging Face hub on first use and draws with it;
## without MODEL it draws with tiny-sd, a test model that draws noise. FEATURES=cuda draws on an
## NVIDIA GPU.
MODEL ?=
FEATURES ?=
PROMPT ?= a rubber duck flying over the clouds
demo:
	@scripts/ensure-tools redis
	$(CARGO) run --release --locked -q -p ducks $(if $(FEATURES),--features $(FEATURES)) -- \
		demo "$(PROMPT)" $(if $(MODEL),--model $(MODEL))

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

## The real model's cost on this CPU: `ducks runner` with sd-turbo's shapes (random weights,
## 2.6 GB written once to target/bench-weights/), seconds per step at 512x512 beside 256x256,
## load, text encoding, VAE decode and peak RSS; 3 rounds of about 10 minutes each on 2 cores
## (BENCH_CPU_ROUNDS=1 for one).
bench-cpu:
	$(CARGO) build --release --locked -p ducks
	$(CARGO) bench -p ducks-tests --bench cpu --locked

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
