"""The whole graph in process on the tiny base, shared by the tests that materialize it: raw
sample -> per-file assets -> dataset -> fine-tuned model -> evaluation_report (-> promoted_model)."""

from pathlib import Path

import dagster as dg

from ft_pipeline.definitions import ALL_ASSETS, DOWNSTREAM_ASSETS, PER_FILE_ASSETS
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.lib.sample_data import build_sample, write_sample

# The tiny random-weight base keeps the whole graph a CPU-minute; the demo trains SmolLM2.
TRAIN = {
    "base_model": "tiny",
    "learning_rate": 0.004,
    "max_length": 512,
    "per_device_train_batch_size": 8,
    "num_train_epochs": 3.0,
}
EVAL = {"max_new_tokens": 32, "n_resamples": 500}
# The robustness suite on 4 prompts, one perturbation, report only: the random-weight tiny base
# scores ~0 whatever the prompt, so "degrades no more than the base" says nothing about the candidate here.
EVAL.update(robustness_examples=4, robustness_perturbations=["punctuation"], robustness_gate=False)


def run_assets(instance, resources, selection, train=None, evaluation=None):
    """Materialize ``selection`` (asset definitions) in process, with the tiny-base training and
    evaluation config; a failed step does not raise."""
    keys = {k.to_user_string() for a in selection for k in a.keys}
    ops = {}
    if "fine_tuned_model" in keys:
        ops["fine_tuned_model"] = {"config": train or TRAIN}
    if "evaluation_report" in keys:
        ops["evaluation_report"] = {"config": evaluation or EVAL}
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        run_config={"ops": ops},
    )


def check_evaluations(result):
    """The run's asset check evaluations by (asset key, check name)."""
    return {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}


def evaluate_sample(instance, data_dir: Path, resources) -> None:
    """Raw sample -> ... -> evaluation_report once (the expensive part: one training run), not yet
    promoted: the sample logs are written to ``data_dir/raw``, registered as dynamic partitions,
    each file materialized, then everything downstream but promoted_model. The promotion gate must
    pass."""
    write_sample(data_dir / "raw")
    names = sorted(build_sample())
    instance.add_dynamic_partitions(log_files_partitions.name, names)
    for name in names:
        assert dg.materialize(PER_FILE_ASSETS, partition_key=name, instance=instance, resources=resources).success
    result = run_assets(instance, resources, DOWNSTREAM_ASSETS[:-1])
    gate = check_evaluations(result)[("evaluation_report", "promotion_gate")]
    assert gate.passed, gate.description
