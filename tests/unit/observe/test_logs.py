"""``--log-format json``: one JSON object per line, with the request id and job ids bound
where the line was logged."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config

import uvicorn.config

from pixelmill.api.middleware import RequestContextMiddleware
from pixelmill.cli.main import app as cli
from pixelmill.observe.logs import JsonFormatter, bind_jobs, bound_request, configure_logging, unbind_job
from pixelmill.settings import Settings
from tests.support.asgi import exchange

log = logging.getLogger("pixelmill.test")


class Lines(logging.Handler):
    """Formats records as JSON lines, as the JSON root handler does."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def capture() -> Lines:
    lines = Lines()
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    return lines


def test_a_line_carries_the_ids_bound_where_it_was_logged():
    lines = capture()
    try:
        log.info("outside")
        with bound_request("r1"):
            log.warning("in %s", "a request")

        async def batch(ids):  # a task of its own, like a worker's
            bind_jobs(ids)
            log.info("running")
            await asyncio.create_task(asyncio.sleep(0))

        asyncio.run(batch(["j1"]))
        asyncio.run(batch(["j1", "j2"]))
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(lines)
    outside, request, one, two, failed = map(json.loads, lines.lines)
    assert outside.keys() == {"time", "level", "logger", "message"} and outside["logger"] == "pixelmill.test"
    assert request["request_id"] == "r1" and request["message"] == "in a request"
    assert request["level"] == "warning"
    assert one["job_id"] == "j1" and "job_ids" not in one
    assert two["job_ids"] == ["j1", "j2"] and "job_id" not in two
    assert "ValueError: boom" in failed["exc_info"] and "request_id" not in failed  # nothing leaked


def test_the_middleware_binds_the_request_id_it_answers_with(tmp_path):
    async def route(scope, receive, send):
        log.info("inside the route")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = RequestContextMiddleware(route, settings=Settings(data_dir=tmp_path))
    lines = capture()
    try:
        answer = asyncio.run(exchange(app, "GET", "/anything"))
    finally:
        log.removeHandler(lines)
    (entry,) = map(json.loads, lines.lines)
    assert answer.status == 204 and entry["request_id"] == answer.headers["x-request-id"]


def test_configure_logging_json_makes_every_line_json(capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        # As a uvicorn started earlier in the process leaves them (text handlers, no propagation).
        logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
        configure_logging("info", "json")
        with bound_request("r9"):
            logging.getLogger("uvicorn.error").info("Started server process")
        entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert entry["logger"] == "uvicorn.error" and entry["request_id"] == "r9"
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_log_format_is_a_setting_and_a_flag(monkeypatch):
    assert Settings().log_format == "text"
    monkeypatch.setenv("PIXELMILL_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    from typer.testing import CliRunner

    help_text = CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--log-format" in help_text and "--metrics-public" in help_text
    assert "--log-format" in CliRunner().invoke(cli, ["worker", "--help"], env={"COLUMNS": "200"}).output


def test_a_job_that_ended_leaves_the_workers_lines():
    lines = capture()

    async def worker():
        bind_jobs(["j1", "j2"])
        unbind_job("j1")
        log.info("one left")
        unbind_job("j2")
        log.info("idle")

    try:
        asyncio.run(worker())
    finally:
        log.removeHandler(lines)
    left, idle = map(json.loads, lines.lines)
    assert left["job_id"] == "j2" and "job_id" not in idle and "job_ids" not in idle


def test_alembics_plugin_list_is_not_logged_at_start_but_migrations_are(caplog):
    """An operator's log says which migrations ran, not which autogenerate plugins exist."""
    configure_logging("info")
    with caplog.at_level(logging.INFO):
        logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
        logging.getLogger("alembic.runtime.migration").info("Running upgrade 0006 -> 0007")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["Running upgrade 0006 -> 0007"]
