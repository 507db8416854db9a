"""Running the model server with uvicorn."""

from __future__ import annotations

import functools
from typing import Any

import uvicorn

from driftloop.config import Config
from driftloop.serving.app import AliasSource, LastKnownGood, ModelSource, Rollback, VersionProbe, create_app


def serve(config: Config, load_champion: ModelSource, champion_version: VersionProbe,
          host: str | None = None, port: int | None = None, *, challenger: AliasSource | None = None,
          rollback: Rollback | None = None, last_known_good: LastKnownGood | None = None) -> None:
    """Serve until interrupted; host and port default to config.serving.

    One worker process: the model, the poller and the log connection live in it, and a second
    worker would load its own copy and race the first one's swaps. No access log: a line per request
    costs more than scoring it; /metrics counts requests by status and their latency.
    """
    host = host or config.serving.host
    app = create_app(config, load_champion, champion_version, challenger=challenger, rollback=rollback, host=host,
                     last_known_good=last_known_good)
    uvicorn.run(app, host=host, port=config.serving.port if port is None else port,
                workers=1, log_level="info", access_log=False)


def registry_rollback(config: Config) -> Rollback:
    """The registry's rollback bound to `config`, imported when first called (MLflow is slow to import)."""

    def call(to_version: str | None = None) -> Any:
        from driftloop.registry.history import rollback

        return rollback(config, to_version=to_version)

    return call


def registry_sources(config: Config) -> tuple[AliasSource, AliasSource]:
    """How the server follows the registry: the champion (promoted versions only, files checked against their
    digests, the last-known-good copy as fallback; registry/trust.py) and the challenger (shadow mode)."""
    from driftloop.registry.store import (  # imported here: MLflow is slow to import
        CHALLENGER,
        alias_version,
        load_alias,
    )
    from driftloop.registry.trust import keep_last_known_good, load_champion, load_last_known_good

    champion = AliasSource(functools.partial(load_champion, config), functools.partial(alias_version, config),
                           LastKnownGood(functools.partial(load_last_known_good, config),
                                         functools.partial(keep_last_known_good, config)))
    challenger = AliasSource(functools.partial(load_alias, config, CHALLENGER),
                             functools.partial(alias_version, config, CHALLENGER))
    return champion, challenger


def serve_champion(config: Config, host: str | None = None, port: int | None = None) -> None:
    """Serve the registry's `champion` alias (what `driftloop serve` runs); `challenger` too in shadow mode."""
    champion, challenger = registry_sources(config)
    serve(config, champion.load, champion.probe, host, port, challenger=challenger,
          rollback=registry_rollback(config), last_known_good=champion.last_known_good)
