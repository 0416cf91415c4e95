"""`headwater up`: the gateway as one worker process per core, on the embedded log."""

from __future__ import annotations

import os
from pathlib import Path

from granian import Granian
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings
from granian.log import LogLevels

from headwater.config import Config


def serve_gateway(
    config: Config,
    config_path: str | None,
    data: Path,
    host: str,
    port: int,
    workers: int,
) -> None:
    """Run the gateway workers until interrupted (SIGINT / SIGTERM stop them gracefully)."""
    os.environ["HEADWATER_DATA"] = str(data.resolve())
    os.environ["HEADWATER_CONFIG"] = str(Path(config_path).resolve()) if config_path else ""
    server = Granian(
        "headwater.gateway.app:create_app",
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        factory=True,
        workers=workers,
        loop=Loops.auto,
        http=HTTPModes.http1,
        websockets=False,
        backpressure=config.gateway.max_concurrent_requests,
        http1_settings=HTTP1Settings(keep_alive=True),
        log_level=LogLevels.warning,
        respawn_failed_workers=True,
        respawn_interval=1.0,
    )
    server.serve()
