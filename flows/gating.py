"""Judging a registered version again, now: the latest labelled window of logged traffic and live shadow figures.

A version that lost its gate keeps the alias `challenger`; with `serving.shadow` the server scores live traffic
with it beside the champion. Once labels have arrived for those requests, `driftloop gate` judges it again with
that live evidence (registry/gate.py) and promotes it if it now wins.
"""

from __future__ import annotations

from driftloop.config import Config
from driftloop.errors import DataError, RegistryError
from driftloop.flows.monitoring import log_to_contract
from driftloop.monitoring.windows import cut_windows
from driftloop.registry.gate import GateDecision, apply_gate
from driftloop.registry.store import CHALLENGER, CHAMPION, alias_version
from driftloop.serving.prediction_log import log_exists, log_name, open_log


def regate(config: Config, version: str | None = None) -> GateDecision:
    """Gate `version` (default: the challenger alias) against the champion on the latest window of logged traffic
    with at least monitoring.min_labelled_rows labels, its holdout and its live shadow rows; moves the aliases."""
    version = version or alias_version(config, CHALLENGER)
    if version is None:
        raise RegistryError(f"model {config.model.name} has no challenger; name a version with --version")
    champion = alias_version(config, CHAMPION)
    if champion is None:
        raise RegistryError(f"model {config.model.name} has no champion yet: train one (driftloop train)")
    if version == champion:
        raise RegistryError(f"version {version} is the champion already")
    if not log_exists(config):
        raise DataError(f"no prediction log at {log_name(config)}: the gate judges on labelled logged traffic")
    chunk = config.serving.log_read_chunk_rows
    with open_log(config) as log:  # ids and times to cut windows, base columns for shadow evidence: no features
        labelled = log.read_index(labelled_only=True, chunk_rows=chunk)
        minimum = config.monitoring.min_labelled_rows
        windows = [] if labelled.empty else [
            w for w in cut_windows(log_to_contract(config, labelled), config) if len(w.frame) >= minimum]
        if not windows:
            raise DataError(f"no window of logged traffic has {minimum} labels (monitoring.min_labelled_rows): "
                            "attach labels first (driftloop label)")
        ids = windows[-1].frame["prediction_id"]
        window = log.read(int(ids.min()), int(ids.max()), labelled_only=True)
        logged = log.read_base(labelled_only=True, chunk_rows=chunk)
    window = window[window["prediction_id"].isin(ids)].reset_index(drop=True)
    return apply_gate(config, version, log_to_contract(config, window), logged=logged)
