"""Provider exit: replacing a hosted production model (an OpenAI fine-tune, or any other hosted
backend) with a local LoRA model that is proven no worse.

Hosted fine-tunes can stop answering when their provider winds fine-tuning down (OpenAI: no new
fine-tuning jobs from 2027-01-06; see README "Leaving a hosted provider"). A replacement is:

1. the plan (:func:`plan_replacement`): production must be a hosted model (``backend`` anything
   but ``local_lora``) with a remote model id; the local candidate trains and is evaluated on the
   very splits the hosted model was trained on (the current splits when they are the same
   version, else that version's files if they are still there, else a clear refusal);
2. training the local candidate on those splits, evaluating it against base and the hosted
   production model with the gate's ``non_inferiority`` production rule;
3. on a passing gate, promotion: the new version's tags and the audit log's reason name the
   replaced hosted model (:meth:`ReplacementPlan.tags`, :meth:`ReplacementPlan.reason`).

Pure Python: the ``replace_hosted_model`` job (ft_pipeline/defs/provider_exit.py) wraps it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_pipeline.lib.evaluation.summary import EvaluationSummary
from ft_pipeline.lib.manifests import SplitsManifest
from ft_pipeline.lib.registry import ModelRegistry, ModelVersion
from ft_pipeline.lib.training.record import ModelRecord, record_path

__all__ = [
    "LOCAL_BACKEND",
    "REPLACEMENT_TAGS",
    "ReplacementPlan",
    "ReplacementRefused",
    "check_replacement_candidate",
    "is_hosted",
    "plan_replacement",
    "replaced_model",
    "replacement_reason",
]

#: The one backend that is not hosted: a model this pipeline trains and serves itself.
LOCAL_BACKEND = "local_lora"
#: The tags a replacement writes on the promoted version (see :meth:`ReplacementPlan.tags`).
REPLACEMENT_TAGS = ("replaced_model_id", "replaced_backend", "replaced_version", "replaced_model_uri")
SPLIT_NAMES = ("train", "validation", "test")


class ReplacementRefused(ValueError):
    """No replacement can be planned: no production model, production is not hosted, or the
    hosted model's training data is gone. The message says which and what to do."""


def is_hosted(version: ModelVersion) -> bool:
    """Whether a registered model is served by a provider (any backend but ``local_lora``: openai,
    and azure, together, ... as they are added), so leaving that provider means replacing it."""
    return version.backend != LOCAL_BACKEND


@dataclass(frozen=True)
class ReplacementPlan:
    """What replacing the hosted production model means: which model, on which data."""

    model_name: str
    production_version: int
    production_uri: str
    """The registry's model uri of the hosted model (the staleness guard of the promotion)."""
    backend: str
    """The hosted backend (``openai``, ...)."""
    remote_model_id: str
    """The provider's model id (``ft:gpt-4o-mini-...``): what the evaluation calls as production."""
    splits: SplitsManifest
    """The split files the hosted model was trained on: the candidate trains and is evaluated on them."""
    current_splits_version: str | None
    """The latest splits' version (``None`` before the first split)."""
    note: str
    """One line on which splits are used and why (logged, and shown on the assets)."""

    @property
    def same_splits(self) -> bool:
        """Whether the hosted model was trained on the current splits."""
        return self.splits.version == self.current_splits_version

    def tags(self) -> dict[str, Any]:
        """The registry tags of the version that replaced the hosted model."""
        return {
            "replaced_model_id": self.remote_model_id,
            "replaced_backend": self.backend,
            "replaced_version": self.production_version,
            "replaced_model_uri": self.production_uri,
        }

    def reason(self, gate_detail: str) -> str:
        """The audit log's reason for the promotion: the replaced hosted model and the gate's numbers."""
        return (
            f"replaces hosted {self.backend} model {self.remote_model_id} ({self.model_name} "
            f"v{self.production_version}): {gate_detail}"
        )

    def describe(self) -> str:
        return (
            f"replace {self.model_name} v{self.production_version}, hosted {self.backend} model "
            f"{self.remote_model_id}; {self.note}"
        )


def plan_replacement(
    registry: ModelRegistry,
    model_name: str,
    *,
    current_splits: SplitsManifest | None,
    data_dir: Path,
) -> ReplacementPlan:
    """The replacement of ``model_name``'s hosted production model.

    The splits the hosted model was trained on: its training record
    (``<data_dir>/models/<run_key>/model.json``) names their files; without the record, the
    version's ``dataset_version`` names the folder ``<data_dir>/splits/<version>/``. The current
    splits are used when they are that version.

    Raises:
        ReplacementRefused: no production model; production is a local model already, or a hosted
            one without a remote model id; it was trained on preference data (dpo, sft_then_dpo:
            the replacement trains sft on the SFT splits); its splits' files are gone.
    """
    production = registry.resolve(model_name, "production")
    if production is None:
        raise ReplacementRefused(
            f"{model_name} has no production model: there is no hosted model to replace "
            "(train and promote with the train_model job instead)"
        )
    if not is_hosted(production):
        raise ReplacementRefused(
            f"{model_name} production is v{production.version}, a {production.backend} model "
            f"({production.model_uri}), not a hosted one: there is nothing to move off a provider "
            "(retrain with the train_model job instead)"
        )
    if not production.remote_model_id:
        raise ReplacementRefused(
            f"{model_name} production v{production.version} ({production.backend}) has no remote model id: "
            "the evaluation cannot call it to compare the replacement with"
        )
    record = _training_record(data_dir, production.run_key)
    method = str(((record or {}).get("config") or {}).get("method", "sft"))
    if method != "sft":
        raise ReplacementRefused(
            f"{model_name} production v{production.version} ({production.remote_model_id}) was trained with "
            f"{method} on preference data {production.dataset_version}; replace_hosted_model trains an sft "
            "replacement on the SFT splits a hosted sft model was trained on"
        )
    wanted = str((record or {}).get("data_version") or production.dataset_version)
    current = current_splits.version if current_splits is not None else None
    hosted = f"the hosted model was trained on splits {wanted}"
    if current_splits is not None and current == wanted:
        splits = current_splits
        note = f"{hosted}, the current splits: the replacement trains and is evaluated on them"
    else:
        paths, looked = _split_files(data_dir, wanted, (record or {}).get("split_paths"))
        now = f"the current splits are {current}" if current else "no splits are materialized"
        if paths is None:
            raise ReplacementRefused(
                f"{hosted}, but their files are gone (looked for {looked}); {now}. A candidate trained or "
                "evaluated on other data would not show that it can replace the hosted model: restore "
                f"splits/{wanted}/ in the data directory and run again"
            )
        # The curated version behind those splits is not recorded with the model (nothing reads it here).
        splits = SplitsManifest(version=wanted, curated_version="", paths=paths)
        note = f"{hosted}, not the current ones ({now}): the replacement trains and is evaluated on splits/{wanted}/"
    return ReplacementPlan(
        model_name=model_name,
        production_version=production.version,
        production_uri=production.model_uri,
        backend=production.backend,
        remote_model_id=production.remote_model_id,
        splits=splits,
        current_splits_version=current,
        note=note,
    )


def check_replacement_candidate(plan: ReplacementPlan, record: ModelRecord | None) -> None:
    """The candidate to evaluate is the replacement of ``plan``: a local model trained on the
    hosted model's splits (else :class:`ReplacementRefused`, saying what it is instead)."""
    if record is None:
        raise ReplacementRefused("no candidate yet: materialize fine_tuned_model in the replace_hosted_model job first")
    if record.backend != LOCAL_BACKEND or record.data_version != plan.splits.version:
        raise ReplacementRefused(
            f"the candidate (models/latest.json, run {record.run_key}) is a {record.backend} model trained on "
            f"{record.data_version}, not a {LOCAL_BACKEND} model trained on splits {plan.splits.version}, which the "
            f"hosted model {plan.remote_model_id} was trained on: run the whole replace_hosted_model job"
        )


def replacement_reason(plan: ReplacementPlan, summary: EvaluationSummary) -> str:
    """The audit log's reason for promoting the replacement: the hosted model it replaces and the
    gate's comparison with it. Raises :class:`ReplacementRefused` when the evaluation compared the
    candidate with another model than the hosted production one."""
    if summary.production_uri != plan.production_uri:
        raise ReplacementRefused(
            f"evaluation {summary.eval_id} compared the candidate with {summary.production_uri or 'no production'}, "
            f"not with the hosted production model {plan.production_uri}: run the whole replace_hosted_model job"
        )
    versus = [r for r in summary.rules if r["rule"] in ("non_inferior_to_production", "beats_production")]
    return plan.reason("; ".join(r["detail"] for r in versus[:1]) or "passed the promotion gate")


def replaced_model(version: ModelVersion) -> dict[str, Any] | None:
    """The hosted model a version replaced (its replacement tags), or ``None``."""
    tags = version.tags or {}
    if "replaced_model_id" not in tags:
        return None
    return {name: tags.get(name) for name in REPLACEMENT_TAGS}


def _training_record(data_dir: Path, run_key: str) -> dict[str, Any] | None:
    """The hosted model's training record (``models/<run_key>/model.json``), when it is still there."""
    path = Path(record_path(Path(data_dir) / "models", run_key))
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _split_files(data_dir: Path, version: str, recorded: Any) -> tuple[dict[str, dict[str, str]] | None, list[str]]:
    """The split files of ``version``: those the training record names, else the splits folder's;
    ``None`` (and where it looked) when a Parquet file of a split is missing."""
    candidates: list[dict[str, dict[str, str]]] = []
    if isinstance(recorded, dict) and all(isinstance(recorded.get(n), dict) for n in SPLIT_NAMES):
        candidates.append({n: {k: str(v) for k, v in recorded[n].items()} for n in SPLIT_NAMES})
    folder = Path(data_dir) / "splits" / version
    candidates.append(
        {n: {"parquet": str(folder / f"{n}.parquet"), "jsonl": str(folder / f"{n}.jsonl")} for n in SPLIT_NAMES}
    )
    looked: list[str] = []
    for paths in candidates:
        missing = [paths[n].get("parquet", "") for n in SPLIT_NAMES if not Path(paths[n].get("parquet", "")).is_file()]
        if not missing:
            return paths, looked
        looked.extend(missing[:1])
    return None, looked
