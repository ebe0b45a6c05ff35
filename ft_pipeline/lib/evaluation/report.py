"""Writing an evaluation: report.json (every number), examples.parquet (every answer), report.md
(the summary people read) and PNG charts."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ft_pipeline.lib.evaluation.review import review_markdown
from ft_pipeline.lib.evaluation.runner import EvaluationResult
from ft_pipeline.lib.pii import DEFAULT_PII_CONFIG, PiiConfig, scrub_pii

ROLES = ("candidate", "base", "production", "prompted")


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


#: Test prompts shown with the base's and the candidate's answers in report.md and the CLI summary.
SIDE_BY_SIDE_EXAMPLES = 3


def side_by_side(examples: Any, n: int = SIDE_BY_SIDE_EXAMPLES, metric: str = "rougeL") -> list[dict[str, Any]]:
    """The first ``n`` distinct test prompts (in test-split order) with the reference and each
    model's answer and score.

    Taken in order rather than picked by score, so the sample is not a flattering one.
    """
    if examples is None or not len(examples) or "prompt" not in examples:
        return []
    by_role = {role: frame.reset_index(drop=True) for role, frame in examples.groupby("model", sort=False)}
    candidate = by_role.get("candidate")
    if candidate is None:
        return []
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(len(candidate)):
        if len(rows) == n:
            break
        prompt = str(candidate.at[i, "prompt"])
        if prompt in seen:  # a stock follow-up ("Thanks, that is all.") once is enough
            continue
        seen.add(prompt)
        row: dict[str, Any] = {
            "conversation_id": str(candidate.at[i, "conversation_id"]),
            "prompt": str(candidate.at[i, "prompt"]),
            "reference": str(candidate.at[i, "reference"]),
            "answers": {},
        }
        for role in ROLES:
            frame = by_role.get(role)
            if frame is not None and i < len(frame):
                score = frame.at[i, metric] if metric in frame else None
                row["answers"][role] = {
                    "text": str(frame.at[i, "prediction"]),
                    metric: None if score is None else float(score),
                }
        rows.append(row)
    return rows


#: Test prompts shown in ``evaluation_report``'s ``examples`` table (the Dagster UI shows it inline).
EXAMPLES_SHOWN = 10
#: Longest text in a cell of that table.
EXAMPLE_TEXT_CHARS = 200


def example_rows(
    examples: Any,
    n: int = EXAMPLES_SHOWN,
    metric: str = "rougeL",
    *,
    max_chars: int = EXAMPLE_TEXT_CHARS,
    pii: PiiConfig = DEFAULT_PII_CONFIG,
) -> list[dict[str, Any]]:
    """The first ``n`` distinct test prompts (as :func:`side_by_side` picks them) as flat rows:
    ``prompt`` (the last user turn), ``reference``, the ``candidate`` and ``base`` answers, and
    ``candidate_<metric>`` / ``base_<metric>`` (the per-example score, ``None`` when missing).

    Every text goes through the PII scrubber (``pii``: the pipeline's policy) before it is cut to
    ``max_chars`` (so a cut never leaves half an address unscrubbed): model output can contain
    anything, and these rows end up in Dagster's event log.
    """
    if n <= 0:
        return []

    def text(value: Any) -> str:
        flat = " ".join(scrub_pii(str(value), pii)[0].split())
        return flat if len(flat) <= max_chars else flat[: max_chars - 1] + "…"

    rows = []
    for example in side_by_side(examples, n=n, metric=metric):
        answers = example["answers"]
        row: dict[str, Any] = {"prompt": text(example["prompt"]), "reference": text(example["reference"])}
        for role in ("candidate", "base"):
            answer = answers.get(role) or {}
            row[role] = text(answer.get("text", ""))
            score = answer.get(metric)
            row[f"{role}_{metric}"] = score if score is not None and math.isfinite(score) else None
        rows.append(row)
    return rows


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
            "side_by_side": side_by_side(result.examples, metric=_answer_metric(context)),
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
        mark = "ℹ️" if rule.get("informational") else "✅" if rule["passed"] else "❌"
        lines.append(f"- {mark} `{rule['rule']}` — {rule['detail']}")
    lines += ["", "## Models", ""]
    for role in roles:
        lines.append(f"- {role}: `{report['model_ids'][role]}`")
    lines += [
        "",
        f"Test split: {report['n_examples']} examples, dataset version `{report.get('dataset_version', '')}`, "
        f"test split hash `{report.get('test_split_hash', '')}`.",
        "",
        "## Metrics (mean)",
        "",
    ]
    lines.append("| metric | " + " | ".join(roles) + " |")
    lines.append("|---|" + "---:|" * len(roles))
    for metric in report["metrics"]:
        lines.append(
            f"| {metric} | " + " | ".join(f"{report['summary'][r].get(metric, float('nan')):.4f}" for r in roles) + " |"
        )
    for baseline, comparisons in report["comparisons"].items():
        lines += [
            "",
            f"## Candidate − {baseline} (paired bootstrap, 95% CI)",
            "",
            "| metric | delta | CI low | CI high | McNemar p |",
            "|---|---:|---:|---:|---:|",
        ]
        for metric, c in comparisons.items():
            p = c.get("p_value")
            lines.append(
                f"| {metric} | {c['delta']:+.4f} | {c['ci_low']:+.4f} | {c['ci_high']:+.4f} | "
                f"{'' if p is None else f'{p:.3g}'} |"
            )
    lines += _prompting_markdown(report)
    judge = (report.get("extra") or {}).get("judge")
    if judge:
        lines += [
            "",
            "## LLM judge (pairwise, both orders must agree)",
            "",
            "| vs | judge | wins | losses | ties | n | net win rate, 95% CI |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for baseline, j in judge.items():
            net = j.get("net_win")
            lines.append(
                f"| {baseline} | `{j['judge_model']}` | {j['wins']} | {j['losses']} | {j['ties']} | {j['n']} |"
                + (f" {net['delta']:+.4f} [{net['ci_low']:+.4f}, {net['ci_high']:+.4f}] |" if net else " |")
            )
    perplexity = (report.get("extra") or {}).get("validation_perplexity")
    if perplexity:
        lines += [
            "",
            "## Validation perplexity",
            "",
            " · ".join(f"{role} {value:.2f}" for role, value in perplexity.items()),
        ]
    preference = (report.get("extra") or {}).get("preference_accuracy")
    if preference:
        lines += ["", "## Preference accuracy (held-out preference pairs)", ""]
        if preference["status"] == "measured":
            lines.append(
                f"Share of the {preference['n_pairs']} test pairs where the model gives the chosen reply a higher "
                "mean log-probability per token than the rejected one: "
                f"candidate {preference['candidate']:.4f} · base {preference['base']:.4f} · delta "
                f"{preference['delta']:+.4f} ({preference['confidence']:.0%} CI {preference['ci_low']:+.4f} to "
                f"{preference['ci_high']:+.4f}, paired bootstrap; McNemar p {preference['p_value']:.3g})."
            )
        else:
            label = "Not measured" if preference["status"] == "not_measured" else "No number"
            lines.append(f"{label}: {preference['reason']}.")
    lines += _latency_markdown((report.get("extra") or {}).get("latency"))
    lines += _cost_markdown((report.get("extra") or {}).get("cost"))
    lines += review_markdown(report.get("extra"))
    lines += _robustness_markdown((report.get("extra") or {}).get("robustness"))
    if report.get("side_by_side"):
        primary = _answer_metric(report)
        lines += ["", "## Answers side by side (first test prompts)", ""]
        for k, row in enumerate(report["side_by_side"], 1):
            lines += [
                f"### {k}. `{row['conversation_id']}`",
                "",
                f"**User:** {_md_quote(row['prompt'])}",
                "",
                f"**Reference:** {_md_quote(row['reference'])}",
                "",
            ]
            for role in ("base", "candidate", "production", "prompted"):
                answer = row["answers"].get(role)
                if answer is not None:
                    score = answer.get(primary)
                    lines.append(
                        f"**{role}** ({primary} {'n/a' if score is None else f'{score:.3f}'}): "
                        f"{_md_quote(answer['text'])}"
                    )
                    lines.append("")
    if report.get("regression_suite"):
        rs = report["regression_suite"]
        lines += ["", f"## Regression suite\n\ncandidate {rs['candidate']:.4f}, base {rs['base']:.4f}"]
    if report.get("slices"):
        lines += [
            "",
            f"## By tag ({_answer_metric(report)})",
            "",
            "| tag | n | " + " | ".join(roles) + " |",
            "|---|---:|" + "---:|" * len(roles),
        ]
        primary = _answer_metric(report)
        for tag, by_role in report["slices"].items():
            n = int(by_role.get("n", {}).get("examples", 0))
            lines.append(
                f"| {tag} | {n} | "
                + " | ".join(f"{by_role[r].get(primary, float('nan')):.4f}" for r in roles if r in by_role)
                + " |"
            )
    return "\n".join(lines) + "\n"


def _answer_metric(report: Mapping[str, Any]) -> str:
    """The per-example metric answers are shown and sliced by: the primary metric, or ROUGE-L when
    the primary metric is a preference one (``answer_metric``; older reports lack the key)."""
    return str(report.get("answer_metric") or report.get("primary_metric", "rougeL"))


def _prompting_markdown(report: Mapping[str, Any]) -> list[str]:
    """The "Fine-tuning vs prompting" section: one sentence saying whether the candidate beat the
    prompted baseline (the lower bound of the candidate − prompted CI above 0), with the numbers,
    what the prompted base was told and the few-shot examples' conversation ids."""
    metric = _answer_metric(report)
    comparison = (report.get("comparisons") or {}).get("prompted", {}).get(metric)
    if not comparison:
        return []
    prompted = (report.get("extra") or {}).get("prompted") or {}
    summary = report.get("summary") or {}
    delta, ci_low, ci_high = (float(comparison[k]) for k in ("delta", "ci_low", "ci_high"))
    beat = ci_low > 0
    verdict = (
        f"**Fine-tuning {'beat' if beat else 'did not beat'} prompting**: {metric} candidate − prompted = "
        f"{delta:+.4f} (95% CI {ci_low:+.4f} to {ci_high:+.4f}, paired bootstrap; the lower bound is "
        f"{'above' if beat else 'not above'} 0)."
    )
    means = " · ".join(
        f"{role} {float(summary[role][metric]):.4f}"
        for role in ("candidate", "prompted", "base")
        if metric in summary.get(role, {})
    )
    ids = prompted.get("example_ids") or []
    source = {
        "config": "the configured one",
        "training": "the system turn the training conversations share",
        "default": "the default instruction",
    }.get(str(prompted.get("system_prompt_source")), "unknown")
    told = (
        f"The prompted baseline is the base model with a system prompt ({source}) and"
        f" {len(ids)} few-shot example(s) of the {prompted.get('k_requested', len(ids))} asked for, from the "
        "training split (never from test): " + (", ".join(f"`{i}`" for i in ids) or "none") + "."
    )
    required = bool((report.get("gate_config") or {}).get("require_beats_prompting", False))
    gate = "The gate requires it (require_beats_prompting)." if required else "Reported, not required by the gate."
    return ["", "## Fine-tuning vs prompting", "", verdict, "", f"Means ({metric}): {means}.", "", told, "", gate]


def _latency_markdown(latency: dict[str, Any] | None) -> list[str]:
    """The "Latency and throughput" section: one row per model and batch size."""
    if not latency or not latency.get("rows"):
        return []
    settings = latency.get("settings", {})
    lines = [
        "",
        "## Latency and throughput",
        "",
        f"{settings.get('n_prompts')} test prompts, at most {settings.get('max_new_tokens')} new tokens per answer, "
        "through the evaluation's generators (a local model answers a batch at once; an OpenAI-compatible one "
        "has that many requests in flight). Latency is per request.",
        "",
        "| model | batch | requests | p50 latency (s) | p95 latency (s) | requests/s | new tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in latency["rows"]:
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {row['requests']} | {row['p50_latency_s']:.3f} | "
            f"{row['p95_latency_s']:.3f} | {row['requests_per_s']:.2f} | {row['new_tokens_per_s']:.1f} |"
        )
    return lines


def _cost_markdown(cost: dict[str, Any] | None) -> list[str]:
    """The "Cost" section: training cost, inference cost per 1k requests per model, payback."""
    if not cost:
        return []
    training, payback = cost["training"], cost["payback"]
    lines = ["", "## Cost", ""]
    if not cost.get("prices_configured"):
        lines += ["Prices not configured (every price is 0, the default): the costs below are 0.", ""]
    training_cost = "unknown" if training["cost"] is None else f"{training['cost']:.4f}"
    lines += [
        f"Training: {training_cost} ({training['detail']}).",
        "",
        f"Inference per 1k requests, from the mean tokens of the evaluation's test requests (reference: the "
        f"{cost['reference']}):",
        "",
        "| model | requests | mean input tokens | mean output tokens | input price / 1M | output price / 1M "
        "| cost / 1k requests | tokens counted by |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in cost["inference"]:
        lines.append(
            f"| {row['model']} | {row['requests']} | {row['mean_input_tokens']:.1f} | "
            f"{row['mean_output_tokens']:.1f} | "
            f"{row['input_price_per_1m_tokens']:g} | {row['output_price_per_1m_tokens']:g} | "
            f"{row['cost_per_1k_requests']:.4f} | {row['token_counter']} |"
        )
    if payback["status"] == "months":
        verdict = f"{payback['months']:.2f} months ({payback['detail']})"
    elif payback["status"] == "never":
        verdict = f"never: {payback['detail']}"
    else:
        verdict = f"not estimated: {payback['detail']}"
    lines += ["", f"Payback: {verdict}."]
    return lines


def _robustness_markdown(robustness: dict[str, Any] | None) -> list[str]:
    """The "Robustness" section: per perturbation, each model's clean -> perturbed mean of the
    answer metric and the degradation gap (candidate - base) with its CI; a line when skipped."""
    if not robustness:
        return []
    lines = ["", "## Robustness", ""]
    if robustness["status"] != "measured":
        return lines + [f"Not measured: {robustness['reason']}."]
    settings = robustness["settings"]
    metric, confidence = settings["metric"], float(settings.get("confidence", 0.95))
    lines += [
        f"{settings['n_examples']} test prompts (a seeded subset) with the last user turn perturbed, answered by "
        f"candidate and base; {metric} on the clean → perturbed prompts. Degradation = clean − perturbed; the gap is "
        f"the candidate's degradation minus the base's (paired bootstrap, {confidence:.0%} CI). The gate fails a gap "
        f"above {float(settings['tolerance']):g} whose CI lies above 0"
        + ("" if settings.get("gate", True) else " (report only: robustness_gate is off)")
        + ".",
        "",
        "| perturbation | changed | candidate clean → perturbed | base clean → perturbed | degradation gap, CI |",
        "|---|---:|---|---|---|",
    ]
    for row in robustness["rows"]:
        lines.append(
            f"| {row['perturbation']} | {row['changed']}/{row['n']} | "
            f"{row['candidate_clean']:.4f} → {row['candidate_perturbed']:.4f} | "
            f"{row['base_clean']:.4f} → {row['base_perturbed']:.4f} | "
            f"{row['gap']:+.4f} [{row['gap_ci_low']:+.4f}, {row['gap_ci_high']:+.4f}] |"
        )
    examples = [row for row in robustness["rows"] if row.get("example")]
    if examples:
        lines += ["", "What a perturbation looks like (the first changed prompt; PII scrubbed, shortened):", ""]

        def shown(text: str) -> str:
            flat = " ".join(scrub_pii(str(text), DEFAULT_PII_CONFIG)[0].split())
            return _md_quote(flat if len(flat) <= EXAMPLE_TEXT_CHARS else flat[: EXAMPLE_TEXT_CHARS - 1] + "…")

        for row in examples:
            lines.append(
                f"- {row['perturbation']}: {shown(row['example']['original'])} → {shown(row['example']['perturbed'])}"
            )
    return lines


def _md_quote(text: str) -> str:
    """One line of Markdown that shows model output as written (no headings, lists or HTML)."""
    flat = " ".join(str(text).split())
    return (
        flat.replace("\\", "\\\\").replace("<", "&lt;").replace("*", "\\*").replace("_", "\\_").replace("#", "\\#")
    ) or "_(empty)_"


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
            ax.bar(
                [i + k * width for i in range(len(metrics))],
                [report["summary"][role].get(m, 0) for m in metrics],
                width,
                label=role,
            )
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
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "examples": out_dir / "examples.parquet",
    }
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    result.examples.to_parquet(paths["examples"], index=False)
    paths.update(write_charts(report, out_dir))
    return paths
