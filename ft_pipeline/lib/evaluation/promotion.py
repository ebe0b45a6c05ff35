"""promote_candidate: the promotion stage as one call (the ``promoted_model`` asset's service)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_pipeline.lib.evaluation.summary import EvaluationSummary
from ft_pipeline.lib.publish import PublishedModel, publish_model_dir
from ft_pipeline.lib.registry import ModelRegistry, StaleBaseline, local_artifact_exists

__all__ = ["NotPromoted", "Promotion", "promote_candidate"]


class NotPromoted(RuntimeError):
    """The candidate was not promoted: it failed the gate, or production changed since its evaluation."""


@dataclass(frozen=True)
class Promotion:
    """Where the ``production`` alias points after the stage, and how it got there."""

    decision: str
    """``promoted``, or ``already production`` (nothing changed)."""
    model_name: str
    production_version: int
    evaluation_id: str
    previous_version: int | None = None
    model_uri: str | None = None
    audit_event_id: int | None = None
    published: PublishedModel | None = None


def promote_candidate(
    summary: EvaluationSummary,
    registry: ModelRegistry,
    *,
    publish_url: str,
    actor: str,
    log: Callable[[str], None] = lambda message: None,
    reason: str | None = None,
    tags_on_success: Mapping[str, Any] | None = None,
) -> Promotion:
    """Move the registry's ``production`` alias to ``summary``'s candidate: one transaction with
    compare-and-swap on the production model it was compared with, the previous version archived,
    the reason and evaluation in the audit log. With ``publish_url`` a local model's run folder is
    published first, so production never points at files that are not there yet.

    ``reason``: the audit log's reason (default: "passed the promotion gate: <the first rule's
    detail>"); ``tags_on_success`` are merged into the promoted
    version's tags once the alias moved (a provider exit names the hosted model it replaced).

    Raises:
        NotPromoted: the gate did not pass, or production changed since the evaluation.
    """
    name, version = summary.model_name, int(summary.candidate_version)
    if summary.already_production:
        current = registry.resolve(name, "production")
        return Promotion("already production", name, current.version if current else version, summary.eval_id)
    if not summary.passed:
        raise NotPromoted(f"evaluation {summary.eval_id} did not pass the promotion gate; production is unchanged")

    published = None
    candidate = registry.get_version(name, version)
    if publish_url and candidate.artifact_path:
        run_dir = Path(candidate.artifact_path).parent
        published = publish_model_dir(run_dir, publish_url, name, version)
        registry.update_tags(
            name, version, {"published_uri": published.uri, "published_manifest_sha256": published.manifest_sha256}
        )
        log(f"published {published.files} files ({published.bytes} bytes) of {name} v{version} to {published.uri}")
    try:
        event = registry.promote(
            name,
            version,
            evaluation_id=summary.eval_id,
            expected_baseline_uri=summary.production_uri,
            reason=reason or "passed the promotion gate: " + "; ".join(r["detail"] for r in summary.rules[:1]),
            actor=actor,
            check_artifact=local_artifact_exists,
        )
    except StaleBaseline as err:
        raise NotPromoted(f"not promoted: {err}") from None
    if tags_on_success:
        registry.update_tags(name, version, dict(tags_on_success))
    promoted = registry.get_version(name, version)
    return Promotion(
        "promoted",
        name,
        version,
        summary.eval_id,
        previous_version=event.from_version,
        model_uri=promoted.model_uri,
        audit_event_id=event.event_id,
        published=published,
    )
