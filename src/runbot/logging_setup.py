"""One log stream for the whole `serve` process: runbot's own events, the web server, libraries, warnings
and uncaught tracebacks all leave through the same renderer, so in JSON mode every line is one JSON object.

runbot's own lines come from structlog (runbot.observability.configure_logging); everything written with
stdlib logging (uvicorn's access and error logs, httpx, hvac, apscheduler, `warnings`) is routed through
structlog's ProcessorFormatter here, with the same redaction as everywhere else.
"""

from __future__ import annotations

import logging
import sys
import threading
import types
from collections.abc import MutableMapping
from typing import Any

import structlog

from runbot.observability import add_trace_id, redact_processor

# uvicorn and friends add their own handlers or stop propagation; we want their records at the root
_TAKEN_OVER = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "fastapi", "apscheduler")


def _stderr() -> Any:
    from runbot.observability import _CurrentStderr

    return _CurrentStderr()


def _drop_color_message(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """uvicorn puts a second, ANSI-coloured copy of its message in `color_message`."""
    event_dict.pop("color_message", None)
    return event_dict


def configure_process_logging(level: str = "INFO", fmt: str = "console", stream: Any = None) -> None:
    """Root logging, warnings and uncaught exceptions through one renderer (`serve` calls this once)."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_color_message,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            add_trace_id,
            redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or _stderr())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.getLevelName(level.upper()))
    for name in _TAKEN_OVER:
        lg = logging.getLogger(name)
        for old in list(lg.handlers):
            lg.removeHandler(old)
        lg.propagate = True
    logging.captureWarnings(True)
    _log_uncaught()


def _log_uncaught() -> None:
    """A traceback that reaches the top of the main thread or any other thread is one log record too."""
    crash = logging.getLogger("runbot.crash")

    def main_hook(kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        crash.critical("uncaught exception", exc_info=(kind, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        exc = args.exc_value if args.exc_value is not None else args.exc_type()
        name = args.thread.name if args.thread is not None else "?"
        crash.critical(
            "uncaught exception in thread %s", name, exc_info=(args.exc_type, exc, args.exc_traceback)
        )

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


def uvicorn_log_level(level: str) -> str:
    """uvicorn's names for the levels (it has no NOTSET; TRACE is below DEBUG)."""
    name = level.lower()
    return name if name in ("critical", "error", "warning", "info", "debug", "trace") else "info"
