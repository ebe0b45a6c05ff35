"""The human review loop end to end (issue 13's done-when): an evaluation with an LLM judge (the
fake OpenAI server) writes a review sample; a person fills it in; `ft-pipeline review import`
records it; the next evaluation of the same model shows the judge's agreement with them and lets
the judge gate."""

import csv
import re

import pandas as pd

from ft_pipeline.cli import main
from ft_pipeline.lib.evaluation.candidate import CandidateEvaluationConfig, evaluate_candidate
from ft_pipeline.lib.evaluation.gate import PromotionGate
from ft_pipeline.lib.evaluation.generation import GenerationConfig
from ft_pipeline.lib.evaluation.latency import LatencyConfig
from ft_pipeline.lib.evaluation.review import ReviewConfig
from ft_pipeline.lib.evaluation.runner import EvaluationConfig
from ft_pipeline.lib.manifests import SplitsManifest
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline.lib.training.record import ModelRecord
from ft_pipeline_tests.fakes.openai_server import FakeOpenAI

BASE = "gpt-4o-mini-2024-07-18"
CANDIDATE = f"ft:{BASE}:org::review1"


def _splits(tmp_path) -> SplitsManifest:
    paths = {}
    for k, (split, n) in enumerate((("train", 4), ("validation", 2), ("test", 8))):
        rows = [
            {
                "conversation_id": f"{split}-{i}",
                "messages": [
                    {"role": "user", "content": f"{split} question {i}"},
                    {"role": "assistant", "content": f"the answer to {split} question {i}"},
                ],
                "tags": ["billing" if i % 2 else "login"],
                "exact_hash": 1000 * k + i,  # int64, as the splits store it
            }
            for i in range(n)
        ]
        path = tmp_path / f"{split}.parquet"
        pd.DataFrame(rows).to_parquet(path, index=False)
        paths[split] = {"parquet": str(path), "jsonl": ""}
    return SplitsManifest(version="v1", curated_version="c1", paths=paths)


def _candidate_answer(messages, body):
    number = int(messages[-1]["content"].split()[-1])
    return f"GOOD answer {number}" if number % 2 == 0 else f"meh answer {number}"


def _judge(messages, body):
    """Prefers the answer that says GOOD (the same in both orders); a tie when neither does."""
    content = messages[-1]["content"]
    a, b = (re.search(rf"Answer {x}:\n(.*?)\n\n", content, re.S).group(1) for x in "AB")
    return "A" if "GOOD" in a else "B" if "GOOD" in b else "TIE"


def _fill_in(path):
    """A reviewer who, like the judge, prefers the GOOD answer, else calls it a tie."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["preferred"] = "A" if "GOOD" in row["answer_a"] else "B" if "GOOD" in row["answer_b"] else "tie"
    filled = path.with_name("filled.csv")
    with filled.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return filled


def test_review_import_changes_what_the_next_report_shows(tmp_path, capsys):
    from ft_pipeline.defs.evaluation import _review_metadata

    splits = _splits(tmp_path)
    record = ModelRecord(
        version="run1",
        path=str(tmp_path / "model.json"),
        backend="openai",
        run_key="run1",
        base_model=BASE,
        data_version="v1",
        split_paths={},
        config={"method": "sft"},
        config_hash="h",
        metrics={},
        remote_model_id=CANDIDATE,
    )
    config = CandidateEvaluationConfig(
        model_name="bot",
        judge_model="judge-1",
        gate=PromotionGate(primary_metric="judge_win_rate"),
        evaluation=EvaluationConfig(n_resamples=200, use_regression_suite=False),
        generation=GenerationConfig(concurrency=4),
        latency=LatencyConfig(enabled=False),
        review=ReviewConfig(review_sample_size=4, review_disagreements=0, judge_min_human_labels=8),
    )
    with FakeOpenAI() as fake, ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}") as registry:
        fake.register_model(CANDIDATE)
        fake.set_responder(CANDIDATE, _candidate_answer)
        fake.register_model("judge-1")
        fake.set_responder("judge-1", _judge)

        def evaluate():
            return evaluate_candidate(
                record,
                splits,
                registry,
                config,
                reports_folder=tmp_path / "reports",
                data_dir=tmp_path,
                openai_client=fake.client,
                code_version="test",
                settings={},
                actor="test",
            )

        first = evaluate()
        paths = first.report_paths
        report = paths["markdown"].read_text()
        assert "## Human review" in report and str(paths["review_sample"]) in report
        assert "Judge agreement with human review" not in report
        rule = next(r for r in first.result.decision.rules if r.rule == "judge_agreement")
        assert not rule.passed and "0 human verdict(s)" in rule.detail
        assert not first.gate_passed

        filled = _fill_in(paths["review_sample"])
        assert main(["review", "import", str(filled), "--reviewer", "alice", "--url", registry.url]) == 0
        assert "imported 8 verdicts by alice" in capsys.readouterr().out

        second = evaluate()
        assert second.summary.eval_id != first.summary.eval_id  # a new evaluation, not a re-run
        report = second.report_paths["markdown"].read_text()
        assert "## Judge agreement with human review" in report
        assert "| `judge-1` | 8 | 1.000 | [1.000, 1.000] | 1.000 | 1 | 1 |" in report
        rule = next(r for r in second.result.decision.rules if r.rule == "judge_agreement")
        assert rule.passed and "lower bound ≥ judge_min_kappa 0.4" in rule.detail
        metadata = _review_metadata(second.result.extra, second.report_paths, tmp_path)
        assert metadata["judge_human_kappa"] == 1.0 and metadata["judge_human_labels"] == 8
        assert metadata["review_sample"].value == f"reports/{second.summary.eval_id}/review_sample.csv"
        assert metadata["review_sample_examples"] == 8
        assert registry.evaluation(second.summary.eval_id)["metrics"]["judge_agreement"]["n"] == 8
