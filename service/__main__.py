"""`python -m service --host 127.0.0.1 --port 8000`: flags override `OMR_` settings.

Shutdown (SIGTERM/SIGINT): readiness turns false at once; requests keep being accepted for
`shutdown_delay_s` (load balancers notice); then the listener closes, in-flight and queued requests finish
within `drain_timeout_s`, and the process exits. A second signal skips the rest of the delay; a third SIGINT
forces an immediate exit.
"""

from __future__ import annotations

import argparse
import logging
import time
from types import FrameType
from typing import Any

import uvicorn

from service.app import create_app
from service.settings import Settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with a readiness-first shutdown: the first signal only starts draining."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self._settings = settings
        self._drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started is None:
            self._drain_started = time.monotonic()
            log.info("signal %d: draining (accepting for %.1fs more, then finishing in-flight work)", sig,
                     self._settings.shutdown_delay_s)  # fmt: skip
            omr = getattr(getattr(self.config.app, "state", None), "omr", None)
            if omr is not None:
                omr.start_draining()
            return  # exit 0 after a clean drain (not re-raised as uvicorn does with captured signals)
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        draining = self._drain_started is not None and not self.should_exit
        if draining and time.monotonic() - self._drain_started >= self._settings.shutdown_delay_s:
            self.should_exit = True
        return await super().on_tick(counter)


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--model-repository")
    p.add_argument("--default-model")
    p.add_argument("--default-version")
    p.add_argument("--model-variant", choices=["fp32", "int8", "fp16", "auto"])
    p.add_argument("--providers", help="comma-separated, in preference order")
    p.add_argument("--require-provider")
    p.add_argument("--intra-op-threads", type=int)
    p.add_argument("--preprocess-threads", type=int)
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--max-delay-ms", type=float)
    p.add_argument("--max-batches-in-flight", type=int)
    p.add_argument("--queue-limit", type=int)
    p.add_argument("--request-timeout-s", type=float)
    p.add_argument("--admission-wait-fraction", type=float)
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--max-crops-per-request", type=int)
    p.add_argument("--shutdown-delay-s", type=float)
    p.add_argument("--drain-timeout-s", type=float)
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    args = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    if "providers" in args:
        args["providers"] = [s.strip() for s in args["providers"].split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    settings = Settings(**parse_args(argv))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s + 0.999),
        access_log=False,  # per-request logs at thousands of requests/s cost more than they tell; see /metrics
        lifespan="on",
    )
    DrainingServer(config, settings).run()


if __name__ == "__main__":
    main()
