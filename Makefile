.PHONY: demo test bench lint
demo:          ## run the bot with the demo runbook (SQLite); fire a sample alert from another shell
	scripts/demo.sh
test:          ## set up everything and run lint, type checks and all tests
	scripts/test.sh
lint:
	.venv/bin/ruff check src tests bench && .venv/bin/mypy src
bench:         ## print engine, intake, audit and graph figures
	.venv/bin/pip install -q -e ".[bench]" && .venv/bin/python bench/engine.py && .venv/bin/python bench/graph.py
