"""Running the model server with uvicorn."""

from __future__ import annotations

import functools

import uvicorn

from driftloop.config import Config
from serving.app import ModelSource, VersionProbe, create_app


def serve(config: Config, load_champion: ModelSource, champion_version: VersionProbe,
          host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted; host and port default to config.serving.

    One worker process: the model, the poller and the log connection live in it, and a second
    worker would load its own copy and race the first one's swaps.
    """
    app = create_app(config, load_champion, champion_version)
    uvicorn.run(app, host=host or config.serving.host,
                port=config.serving.port if port is None else port, workers=1, log_level="info")


def serve_champion(config: Config, host: str | None = None, port: int | None = None) -> None:
    """Serve the registry's `champion` alias (what `driftloop serve` runs)."""
    from registry.store import alias_version, load_alias  # imported here: MLflow is slow to import

    serve(config, functools.partial(load_alias, config), functools.partial(alias_version, config), host, port)
