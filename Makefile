.PHONY: demo test bench lint
demo:          ## the real loop on 127.0.0.1: demo exporter, Prometheus, Alertmanager and runbot (SQLite in data/demo)
	scripts/demo.sh
test:          ## set up everything and run lint, type checks and all tests
	scripts/test.sh
lint:
	.venv/bin/ruff check src tests bench && .venv/bin/mypy src
bench:         ## print engine, intake, audit and graph figures
	.venv/bin/pip install -q -e ".[bench]" && .venv/bin/python bench/engine.py && .venv/bin/python bench/graph.py
