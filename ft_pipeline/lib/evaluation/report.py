"""Writing an evaluation: report.json (every number), examples.parquet (every answer), report.md
(the summary people read) and PNG charts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ft_pipeline.lib.evaluation.runner import EvaluationResult

ROLES = ("candidate", "base", "production")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


def report_dict(result: EvaluationResult, context: dict[str, Any]) -> dict[str, Any]:
    """Everything in one JSON-able dict: the ids that make it reproducible, and all numbers."""
    return _json_safe(
        {
            **context,
            "model_ids": result.model_ids,
            "n_examples": int((result.examples["model"] == "candidate").sum()),
            "metrics": result.metrics,
            "summary": result.summary,
            "comparisons": result.comparisons,
            "slices": result.slices,
            "regression_suite": result.regression,
            "decision": result.decision.to_dict(),
            **({"extra": result.extra} if result.extra else {}),
        }
    )


def render_markdown(report: dict[str, Any]) -> str:
    roles = [r for r in ROLES if r in report["summary"]]
    lines = [f"# Evaluation {report.get('eval_id', '')}", ""]
    decision = report["decision"]
    lines.append(f"**Decision: {'PROMOTE' if decision['passed'] else 'DO NOT PROMOTE'}**")
    lines.append("")
    for rule in decision["rules"]:
        lines.append(f"- {'✅' if rule['passed'] else '❌'} `{rule['rule']}` — {rule['detail']}")
    lines += ["", "## Models", ""]
    for role in roles:
        lines.append(f"- {role}: `{report['model_ids'][role]}`")
    lines += ["", f"Test split: {report['n_examples']} examples, dataset version `{report.get('dataset_version', '')}`, "
              f"test split hash `{report.get('test_split_hash', '')}`.", "", "## Metrics (mean)", ""]
    lines.append("| metric | " + " | ".join(roles) + " |")
    lines.append("|---|" + "---:|" * len(roles))
    for metric in report["metrics"]:
        lines.append(f"| {metric} | " + " | ".join(f"{report['summary'][r].get(metric, float('nan')):.4f}" for r in roles) + " |")
    for baseline, comparisons in report["comparisons"].items():
        lines += ["", f"## Candidate − {baseline} (paired bootstrap, 95% CI)", "", "| metric | delta | CI low | CI high | McNemar p |", "|---|---:|---:|---:|---:|"]
        for metric, c in comparisons.items():
            p = c.get("p_value")
            lines.append(f"| {metric} | {c['delta']:+.4f} | {c['ci_low']:+.4f} | {c['ci_high']:+.4f} | {'' if p is None else f'{p:.3g}'} |")
    judge = (report.get("extra") or {}).get("judge")
    if judge:
        lines += ["", "## LLM judge (pairwise, both orders must agree)", "", "| vs | judge | wins | losses | ties | n |", "|---|---|---:|---:|---:|---:|"]
        for baseline, j in judge.items():
            lines.append(f"| {baseline} | `{j['judge_model']}` | {j['wins']} | {j['losses']} | {j['ties']} | {j['n']} |")
    perplexity = (report.get("extra") or {}).get("validation_perplexity")
    if perplexity:
        lines += ["", "## Validation perplexity", "", " · ".join(f"{role} {value:.2f}" for role, value in perplexity.items())]
    if report.get("regression_suite"):
        rs = report["regression_suite"]
        lines += ["", f"## Regression suite\n\ncandidate {rs['candidate']:.4f}, base {rs['base']:.4f}"]
    if report.get("slices"):
        lines += ["", "## By tag (primary metric)", "", "| tag | n | " + " | ".join(roles) + " |", "|---|---:|" + "---:|" * len(roles)]
        primary = report.get("primary_metric", "rougeL")
        for tag, by_role in report["slices"].items():
            n = int(by_role.get("n", {}).get("examples", 0))
            lines.append(f"| {tag} | {n} | " + " | ".join(f"{by_role[r].get(primary, float('nan')):.4f}" for r in roles if r in by_role) + " |")
    return "\n".join(lines) + "\n"


def write_charts(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = [r for r in ROLES if r in report["summary"]]
    metrics = [m for m in report["metrics"] if m != "length_ratio"]
    charts = {}
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    try:
        width = 0.8 / max(1, len(roles))
        for k, role in enumerate(roles):
            ax.bar([i + k * width for i in range(len(metrics))], [report["summary"][role].get(m, 0) for m in metrics], width, label=role)
        ax.set_xticks([i + width * (len(roles) - 1) / 2 for i in range(len(metrics))], metrics, rotation=20)
        ax.set_ylabel("mean score")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        charts["metrics"] = out_dir / "metrics.png"
        fig.savefig(charts["metrics"])
    finally:
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    try:
        offset = 0.0
        for baseline, comparisons in report["comparisons"].items():
            ys = [i + offset for i in range(len(metrics))]
            deltas = [comparisons[m]["delta"] for m in metrics]
            lows = [comparisons[m]["delta"] - comparisons[m]["ci_low"] for m in metrics]
            highs = [comparisons[m]["ci_high"] - comparisons[m]["delta"] for m in metrics]
            ax.errorbar(deltas, ys, xerr=[lows, highs], fmt="o", capsize=3, label=f"candidate − {baseline}")
            offset += 0.25
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(metrics)), metrics)
        ax.set_xlabel("difference of means, 95% CI")
        ax.legend()
        fig.tight_layout()
        charts["deltas"] = out_dir / "deltas.png"
        fig.savefig(charts["deltas"])
    finally:
        plt.close(fig)
    return charts


def write_report(result: EvaluationResult, out_dir: str | Path, context: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md, examples.parquet and the charts into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report_dict(result, context)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "examples": out_dir / "examples.parquet"}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    result.examples.to_parquet(paths["examples"], index=False)
    paths.update(write_charts(report, out_dir))
    return paths
