"""EvaluationSummary: what ``evaluation_report`` hands to ``promoted_model``.

Written as ``reports/latest.json`` (a typed manifest, see :mod:`ft_pipeline.lib.manifests`) beside
the full report of that evaluation (``reports/<eval_id>/report.json``, which ``path`` names).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

from ft_pipeline.lib.manifests import read_manifest, write_manifest

__all__ = ["EvaluationSummary", "read_evaluation_summary", "write_evaluation_summary"]


@dataclasses.dataclass(frozen=True)
class EvaluationSummary:
    """One evaluation's decision, and what promoting its candidate needs."""

    KIND: ClassVar[str] = "evaluation_summary"
    SCHEMA: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "evaluation_report"

    version: str
    """The evaluation id."""
    path: str
    """The full report (``reports/<eval_id>/report.json``)."""
    model_name: str
    candidate_version: int
    candidate_uri: str
    production_version: int | None
    production_uri: str | None
    """The production model the candidate was compared with: promotion is a compare-and-swap on it."""
    already_production: bool
    passed: bool
    """The promotion gate's decision."""
    rules: list[dict[str, Any]]
    """The gate's rules in order: ``{"rule", "passed", "detail"}``."""

    @property
    def eval_id(self) -> str:
        return self.version

    @property
    def decision(self) -> str:
        """``promote``, ``reject`` or ``already production``."""
        if self.passed:
            return "promote"
        return "already production" if self.already_production else "reject"


def write_evaluation_summary(reports_folder: str | os.PathLike, summary: EvaluationSummary) -> None:
    write_manifest(reports_folder, summary)


def read_evaluation_summary(reports_folder: str | os.PathLike) -> EvaluationSummary | None:
    """The latest evaluation's summary; ``None`` before the first evaluation.

    Raises:
        ManifestError: ``latest.json`` was written by an older ft-pipeline.
    """
    return read_manifest(reports_folder, EvaluationSummary)
