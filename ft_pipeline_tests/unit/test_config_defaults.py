"""Every Dagster run Config default is its lib default: one value per setting, defined in lib.

The Config classes are discovered by importing every module of ``ft_pipeline.defs``, so a new one
fails here until it has a row below. Each row names the lib objects whose same-named attributes
are the defaults (``SOURCES``), the fields whose lib counterpart has another name (``RENAMED``),
and the fields that have no lib counterpart at all (``NO_LIB``, with the reason). Resources
(ConfigurableResource is a dg.Config too) describe deployments rather than stage settings and are
not covered, except the one resource field that is a stage setting: the OpenAI base model.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest

import ft_pipeline.defs
from ft_pipeline.lib.augmentation import AugmentationConfig
from ft_pipeline.lib.cleaning import CleaningConfig
from ft_pipeline.lib.curation import CurationConfig
from ft_pipeline.lib.dedup import DedupConfig
from ft_pipeline.lib.evaluation.candidate import CandidateEvaluationConfig
from ft_pipeline.lib.evaluation.cost import CostConfig
from ft_pipeline.lib.evaluation.gate import PromotionGate
from ft_pipeline.lib.evaluation.generation import GenerationConfig
from ft_pipeline.lib.evaluation.latency import LatencyConfig
from ft_pipeline.lib.evaluation.prompted_baseline import PromptedBaselineConfig
from ft_pipeline.lib.evaluation.report import EXAMPLES_SHOWN
from ft_pipeline.lib.evaluation.review import ReviewConfig
from ft_pipeline.lib.evaluation.robustness import RobustnessConfig
from ft_pipeline.lib.evaluation.runner import EvaluationConfig
from ft_pipeline.lib.exports import DEFAULT_LICENSE
from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL
from ft_pipeline.lib.pii import CustomPiiPattern
from ft_pipeline.lib.preference_dataset import PreferenceDatasetConfig
from ft_pipeline.lib.preferences import PreferenceConfig
from ft_pipeline.lib.records import IngestCheckConfig, ReadConfig
from ft_pipeline.lib.splits import SplitConfig
from ft_pipeline.lib.tokens import TokenCounterConfig
from ft_pipeline.lib.training.backends.together import TogetherFineTuneConfig
from ft_pipeline.lib.training.lora import LoraTrainingConfig
from ft_pipeline.lib.training.openai_job import OpenAIFineTuneConfig
from ft_pipeline.lib.training.record import DEFAULT_BACKEND


def _str(value: Any) -> str:
    return str(value)


def _empty_for_none(value: Any) -> Any:
    return "" if value is None else value


_AUTO_OR_NUMBER = ("n_epochs", "batch_size", "learning_rate_multiplier", "dpo_beta")

#: class name -> SOURCES (lib objects, searched in order by field name), RENAMED (field ->
#: (lib object, attribute[, how the Config spells the value])), NO_LIB (field -> why).
TABLE: dict[str, dict[str, Any]] = {
    "RawLogsRunConfig": {"SOURCES": [ReadConfig(), IngestCheckConfig()]},
    "CleaningRunConfig": {
        "SOURCES": [CleaningConfig()],
        "RENAMED": {"minhash_num_perm": (DedupConfig(), "num_perm"), "minhash_ngram": (DedupConfig(), "ngram")},
    },
    "CurationRunConfig": {
        "SOURCES": [CurationConfig(), TokenCounterConfig()],
        "RENAMED": {
            "near_dup_threshold": (DedupConfig(), "threshold"),
            "lsh_bands": (DedupConfig(), "bands"),
            "drop_prefix_duplicates": (DedupConfig(), "drop_prefix_duplicates"),
            "drop_branch_duplicates": (DedupConfig(), "drop_branch_duplicates"),
        },
    },
    "SplitRunConfig": {
        "SOURCES": [SplitConfig()],
        "RENAMED": {"export_license": (None, DEFAULT_LICENSE)},
        "NO_LIB": {"exports": "the wrapper's switch for writing the exports at all"},
    },
    "PreferenceRunConfig": {"SOURCES": [PreferenceConfig(), PreferenceDatasetConfig()]},
    "AugmentationRunConfig": {"SOURCES": [AugmentationConfig()]},
    "FineTuneRunConfig": {
        "SOURCES": [LoraTrainingConfig()],
        "NO_LIB": {
            "train_on_augmented": "the wrapper's choice of train file (the lib takes the manifest or None)",
            "replace_hosted_production": "the job replace_hosted_model's switch (lib: provider_exit.py)",
        },
        "RENAMED": {
            "backend": (None, DEFAULT_BACKEND),
            # The training objective, shared by both backends (LoraTrainingConfig's default is the same).
            "method": (OpenAIFineTuneConfig(), "method"),
            # 'auto' or a number, typed as text in the Launchpad.
            **{f"openai_{name}": (OpenAIFineTuneConfig(), name, _str) for name in _AUTO_OR_NUMBER},
            **{
                f"openai_{name}": (OpenAIFineTuneConfig(), name)
                for name in ("suffix", "poll_interval_s", "max_poll_interval_s", "timeout_s")
            },
            # together: 'max' or an integer, typed as text in the Launchpad.
            "together_batch_size": (TogetherFineTuneConfig(), "batch_size", _str),
            **{
                f"together_{name}": (TogetherFineTuneConfig(), name)
                for name in (
                    "lora",
                    "lora_r",
                    "lora_alpha",
                    "lora_dropout",
                    "n_epochs",
                    "learning_rate",
                    "n_evals",
                    "dpo_beta",
                    "suffix",
                    "poll_interval_s",
                    "max_poll_interval_s",
                    "timeout_s",
                )
            },
        },
    },
    "EvaluationRunConfig": {
        # seed is both the bootstrap's and the generation's; their lib defaults agree (checked below).
        "SOURCES": [
            CandidateEvaluationConfig(),
            PromotionGate(),
            EvaluationConfig(),
            GenerationConfig(),
            CostConfig(),
            ReviewConfig(),
        ],
        # How many test prompts the asset's metadata shows (lib/evaluation/report.py builds the rows).
        "RENAMED": {
            "examples_shown": (None, EXAMPLES_SHOWN),
            "measure_latency": (LatencyConfig(), "enabled"),
            "latency_prompts": (LatencyConfig(), "n_prompts"),
            "latency_batch_sizes": (LatencyConfig(), "batch_sizes", list),
            "latency_max_new_tokens": (LatencyConfig(), "max_new_tokens"),
            "prompted_baseline": (PromptedBaselineConfig(), "enabled"),
            "prompted_k": (PromptedBaselineConfig(), "k"),
            "prompted_system_prompt": (PromptedBaselineConfig(), "system_prompt"),
            "prompted_max_example_chars": (PromptedBaselineConfig(), "max_example_chars"),
            "robustness": (RobustnessConfig(), "enabled"),
            "robustness_perturbations": (RobustnessConfig(), "perturbations", list),
            "robustness_typo_rate": (RobustnessConfig(), "typo_rate"),
            "robustness_examples": (RobustnessConfig(), "max_examples"),
            "robustness_tolerance": (RobustnessConfig(), "tolerance"),
            "robustness_gate": (RobustnessConfig(), "gate"),
            "paraphrase_model": (RobustnessConfig(), "paraphrase_model"),
        },
        "NO_LIB": {"replace_hosted_production": "the job replace_hosted_model's switch (lib: provider_exit.py)"},
    },
    "PromotionRunConfig": {
        "SOURCES": [],
        "NO_LIB": {"replace_hosted_production": "the job replace_hosted_model's switch (lib: provider_exit.py)"},
    },
    "CustomPiiPatternConfig": {
        "SOURCES": [],
        "RENAMED": {
            "validator": (CustomPiiPattern(name="X", regex="x"), "validator", _empty_for_none),
            "ignore_case": (CustomPiiPattern(name="X", regex="x"), "ignore_case"),
        },
    },
}

#: Fields that belong to the dataset engineer's Configs and have no lib default yet (xfail until
#: they do; reported, not edited here).
PENDING: dict[tuple[str, str], str] = {}


def _config_classes() -> dict[str, type[dg.Config]]:
    found: dict[str, type[dg.Config]] = {}
    for module_info in pkgutil.iter_modules(ft_pipeline.defs.__path__):
        module = importlib.import_module(f"ft_pipeline.defs.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, dg.Config)
                and not issubclass(cls, dg.ConfigurableResource)
                and cls.__module__.startswith("ft_pipeline.defs")
            ):
                found[cls.__name__] = cls
    return found


CONFIG_CLASSES = _config_classes()


def _fields() -> list[Any]:
    rows = []
    for class_name, cls in sorted(CONFIG_CLASSES.items()):
        for field_name, info in cls.model_fields.items():
            if info.is_required():
                continue
            reason = PENDING.get((class_name, field_name))
            marks = [pytest.mark.xfail(reason=f"dataset engineer: {reason}", strict=False)] if reason else []
            rows.append(pytest.param(class_name, field_name, id=f"{class_name}.{field_name}", marks=marks))
    return rows


def _lib_default(class_name: str, field_name: str) -> Any:
    row = TABLE[class_name]
    if field_name in row.get("NO_LIB", {}):
        pytest.skip(f"no lib counterpart: {row['NO_LIB'][field_name]}")
    renamed = row.get("RENAMED", {})
    if field_name in renamed:
        source, attribute, *spelling = renamed[field_name]
        value = attribute if source is None else getattr(source, attribute)
        convert: Callable[[Any], Any] | None = spelling[0] if spelling else None
        return convert(value) if convert else value
    for source in row["SOURCES"]:
        if hasattr(source, field_name):
            return getattr(source, field_name)
    raise AssertionError(
        f"{class_name}.{field_name} has no lib default: define it in lib and read it in the Config, "
        "or list the field in this test's table (RENAMED or NO_LIB, with the reason)"
    )


def _normalized(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def test_every_config_class_has_a_row():
    assert set(CONFIG_CLASSES) - set(TABLE) == set(), "a new dg.Config in ft_pipeline/defs needs a row in TABLE"
    # The dataset engineer's classes are covered too (a rename would silently drop them otherwise).
    assert {
        "RawLogsRunConfig",
        "CleaningRunConfig",
        "CurationRunConfig",
        "SplitRunConfig",
        "FineTuneRunConfig",
        "EvaluationRunConfig",
    } <= set(CONFIG_CLASSES)


@pytest.mark.parametrize("class_name, field_name", _fields())
def test_config_default_is_the_lib_default(class_name, field_name):
    info = CONFIG_CLASSES[class_name].model_fields[field_name]
    config_default = info.get_default(call_default_factory=True)
    assert _normalized(config_default) == _normalized(_lib_default(class_name, field_name))


def test_seeds_of_evaluation_agree_in_lib():
    # EvaluationRunConfig.seed drives the bootstrap and the generation: one value for both.
    assert EvaluationConfig().seed == GenerationConfig().seed
    # ... and the robustness suite's subset and perturbations.
    assert RobustnessConfig().seed == EvaluationConfig().seed


def test_openai_base_model_is_one_resource_setting():
    from ft_pipeline.defs.resources import OpenAIFineTuningResource

    assert OpenAIFineTuningResource.model_fields["model"].default == DEFAULT_OPENAI_FINE_TUNING_MODEL


def test_together_base_model_is_one_resource_setting():
    from ft_pipeline.defs.resources import TogetherResource
    from ft_pipeline.defs.training import FineTuneRunConfig

    assert TogetherResource.model_fields["model"].default == TogetherFineTuneConfig().model
    assert not any(name == "together_model" for name in FineTuneRunConfig.model_fields)
    assert OpenAIFineTuneConfig().model == DEFAULT_OPENAI_FINE_TUNING_MODEL
    assert "openai_model" not in FineTuneRunConfig.model_fields
