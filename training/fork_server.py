"""The fork server the local ranks start from, and starting it early.

The ranks are forked from one server process that imports torch and the rank's module once (launcher.launch). That
server starts at the first launch, and the launch waits for its imports (seconds). `start_early` starts it at the
start of a command instead, so that its imports run beside the command's own. Standard library only: importing this
module must not pull torch in before the server starts.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

# forkserver: one server process imports torch and the rank's module once, then forks each rank from it. With
# spawn every rank re-imported torch (~2.5 s of CPU each here), at every launch. The server starts clean (it is
# not a fork of this process), so threads, CUDA and process groups of the parent never leak into ranks.
START_METHOD = "forkserver"
# Where the training ranks' entry point lives (trainer.pipeline_rank), and what every pipeline rank imports besides
# (training.pipeline.PIPELINING, which the parent never imports): what the server imports before forking.
TRAINING_RANK_MODULE = "driftloop.training.trainer"
RANK_PRELOAD = ("torch.distributed.pipelining",)


@contextmanager
def without_main_reimport() -> Iterator[None]:
    """Stop spawn and forkserver from re-running the parent's __main__ script in every rank.

    The rank function lives in an importable module, so ranks need nothing from __main__; re-running it would
    import whatever the calling script imports (the whole CLI, say) once more per rank, and a script without an
    `if __name__ == "__main__"` guard would even start training again.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def start(preload: Sequence[str]) -> None:
    """Start this process's fork server with `preload` imported in it, unless it runs already (then its preload
    stays what it was). Returns at once: the server imports in the background, and a launch waits for it."""
    multiprocessing.get_context(START_METHOD).set_forkserver_preload(list(preload))
    with without_main_reimport():
        multiprocessing.forkserver.ensure_running()


def start_early(stages: int, launcher: str) -> None:
    """Start the training ranks' fork server now when this training will fork ranks (launcher local, more than one
    stage); with one stage, or launcher single_process or torchrun, nothing is forked and nothing starts."""
    if launcher == "local" and stages > 1:
        start([TRAINING_RANK_MODULE, *RANK_PRELOAD])
