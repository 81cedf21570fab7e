"""Running the app on uvicorn, with a graceful stop: the first SIGINT/SIGTERM starts a drain (new
requests get 503, those in flight finish, for at most `drain_seconds`), a second stops at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from nmt.config import ServeConfig
from nmt.serve.app import ServerState, create_app, load_translators


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        state: ServerState,
        drain_seconds: float,
        say: Callable[[str], None],
    ) -> None:
        super().__init__(config)
        self.state = state
        self.drain_seconds = drain_seconds
        self.say = say
        self.drain_deadline = 0.0

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                self.say(f"serving on http://{host}:{port} (Ctrl-C stops)")

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Unlike uvicorn's own handler, the signal is not raised again after the shutdown: a
        # drained server exits with status 0.
        if self.state.draining:
            self.should_exit = self.force_exit = True
            return
        self.state.draining = True
        self.drain_deadline = time.monotonic() + self.drain_seconds
        self.say("draining: finishing the requests in flight, refusing new ones")

    async def on_tick(self, counter: int) -> bool:
        if self.state.draining and (
            self.state.in_flight == 0 or time.monotonic() > self.drain_deadline
        ):
            self.should_exit = True
        return await super().on_tick(counter)


def serve(runs: list[Path], cfg: ServeConfig, say: Callable[[str], None]) -> None:
    """Load the models, then serve until stopped by a signal."""
    translators = load_translators(list(runs), cfg.device, say)
    for name, translator in translators.items():
        info = translator.info()
        say(
            f"model {name}: {info['src_lang']}-{info['tgt_lang']} {info['arch']}, "
            f"{info['parameters']:,} parameters"
        )
    app = create_app(translators, cfg)
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False, lifespan="on"
    )
    DrainingServer(config, app.state, cfg.drain_seconds, say).run()
    say("stopped")
