# The README's two commands are `make demo` and `make test`; both set up what they need first.
PYTEST_ARGS ?=

.PHONY: setup demo test lint fuzz chaos bench deb rpm clean

setup:
	bash .ci/setup

demo: setup
	.venv/bin/gantryd demo $(if $(SOURCE),--source $(SOURCE))

# The dockerd-restart test runs on its own, after everything else, when GANTRYD_DISRUPTIVE=1
# (CI sets it): it restarts the machine's Docker Engine.
test: setup
	.venv/bin/pytest -m "not disruptive" $(PYTEST_ARGS)
	@if [ "$${GANTRYD_DISRUPTIVE:-}" = 1 ]; then \
	    .venv/bin/pytest -m disruptive -p no:cacheprovider tests/container/test_dockerd_restart.py; \
	fi

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache

fuzz: setup
	GANTRYD_FUZZ_EXAMPLES=20000 .venv/bin/pytest -m 'not slow' tests/orchestrator/test_webhook.py -k fuzz

# The queue's SIGKILL test for 200 rounds, then gantryd serve SIGKILLed 10 times per job source
# (GANTRYD_CHAOS_KILLS; the suite runs 3): -s prints restart -> first new runner figures.
chaos: setup
	GANTRYD_CHAOS_ROUNDS=200 .venv/bin/pytest tests/queue/test_crash.py
	GANTRYD_CHAOS_KILLS=$${GANTRYD_CHAOS_KILLS:-10} .venv/bin/pytest -s tests/test_chaos.py

bench: setup
	.venv/bin/python bench/job_queue.py
	.venv/bin/python bench/intake.py
	.venv/bin/python bench/dispatch.py
	.venv/bin/python bench/footprint.py

deb:
	bash packaging/build-deb.sh

rpm:
	bash packaging/build-rpm.sh

clean:
	rm -rf dist build *.egg-info .pytest_cache .mypy_cache .ruff_cache
