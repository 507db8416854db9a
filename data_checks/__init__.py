"""driftloop data_checks stage: the Great Expectations gate in front of training.

`build_suite` turns the config's data contract and a reference profile into a GX suite (`init_suite`
writes it to a file the team then owns: validation.suite), `validate_frame` / `validate_file` run it
with GX, plus a scan of every text column for PII-looking values, and write an HTML report;
`quarantine` keeps a failed batch aside with its reasons.
"""

from driftloop.data_checks.quarantine import list_quarantine, quarantine
from driftloop.data_checks.saved_suite import init_suite
from driftloop.data_checks.suite import build_suite
from driftloop.data_checks.validate import FailedExpectation, ValidationReport, validate_file, validate_frame

__all__ = [
    "FailedExpectation",
    "ValidationReport",
    "build_suite",
    "init_suite",
    "list_quarantine",
    "quarantine",
    "validate_file",
    "validate_frame",
]
