"""Asset checks: the migration's acceptance thresholds on ``eval_summary``, and a clean baseline load.

Each threshold compares one summary column with one ``EvalSettings`` field; a miss fails with
severity ERROR (red in the Dagster UI). A figure that could not be measured is not a miss:

- when there was nothing to measure by design (the batch has no reference file, or every result
  was reused from an earlier run, so no image was timed), the check passes and says
  "not measured because …", with metadata ``measured: false`` and the reason;
- when the reason is itself something to fix (a reference file that covers no image of the batch,
  a batch whose every image failed), it fails with severity WARN (yellow) and says why.

Every unmeasured outcome has severity WARN, so ERROR always means a measured miss (the category-entropy
check warns even when measured: a batch may truly be of one subject). (Dagster 1.13
shows severity only on failures; a check that emits no result shows as "skipped", with no room
for the reason, hence a passing result that carries it.)
"""


import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    PreviewWarning,
    asset_check,
)

from resources.partitions import batch_partitions
from resources.settings import PixelsiftSettings
from evals.settings import EvalSettings
from evals.summary import headline_markdown
from evals.parquet_schemas import PROBLEM


@dataclass(frozen=True)
class Threshold:
    check: str
    figure: str  # what the check message calls the value
    column: str  # eval_summary column
    setting: str  # EvalSettings field
    minimum: bool  # True: the figure must reach the setting; False: must not exceed it
    scale: float  # multiplies the column into the setting's unit
    description: str
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR  # of a measured miss


def _quality(check: str, column: str, setting: str, minimum: bool, description: str,
             severity: AssetCheckSeverity = AssetCheckSeverity.ERROR) -> Threshold:
    return Threshold(check=check, figure=column, column=column, setting=setting, minimum=minimum, scale=1.0,
                     description=description, severity=severity)


# Reference-free (evals/output_quality.py): they judge every batch, with or without a reference file.
QUALITY_THRESHOLDS = [
    _quality("few_repeated_tags_or_objects", "duplicate_rate", "max_duplicate_rate", False,
             "Few model outputs repeat a tag or an object."),
    _quality("tags_grounded_in_captions", "tag_grounding", "min_tag_grounding", True,
             "The model's tags mostly share a word with the caption they were written from."),
    _quality("tags_do_not_echo_prompt_options", "option_echo_rate", "max_option_echo_rate", False,
             "Tags are not the prompt's category and scene options copied without support in the caption."),
    _quality("confidences_vary", "constant_confidence_rate", "max_constant_confidence_rate", False,
             "Objects of one output do not all get the same confidence."),
    _quality("categories_vary_across_the_batch", "category_entropy", "min_category_entropy", True,
             "The batch's images are not all put in one category (a warning: a batch may truly be one subject).",
             AssetCheckSeverity.WARN),
    _quality("captions_not_degenerate", "degenerate_caption_rate", "max_degenerate_caption_rate", False,
             "Few captions are empty, wordless, undecodable or loops of few words."),
]


THRESHOLDS = [
    Threshold(
        check="metadata_accuracy_meets_target", figure="metadata_accuracy", column="metadata_accuracy",
        setting="min_metadata_accuracy", minimum=True, scale=1.0,
        description="metadata_accuracy (weighted per-field agreement with the baseline) reaches the migration target.",
    ),
    Threshold(
        check="fallback_rate_within_limit", figure="fallback_rate", column="fallback_rate",
        setting="max_fallback_rate", minimum=False, scale=1.0,
        description="Few LLM outputs were replaced by the rule-based fallback.",
    ),
    Threshold(
        check="llm_outputs_schema_valid", figure="json_validity", column="json_validity",
        setting="min_json_validity", minimum=True, scale=1.0,
        description="Every LLM output (image metadata and cluster labels) parsed and validated against its schema.",
    ),
    Threshold(
        check="p95_latency_within_limit", figure="p95 end-to-end seconds per image", column="end_to_end_p95_ms",
        setting="max_p95_latency_s", minimum=False, scale=0.001,
        description="95th percentile of end-to-end seconds per image is within the limit.",
    ),
    *QUALITY_THRESHOLDS,
]


@dataclass(frozen=True)
class Unmeasured:
    reason: str  # completes "not measured because …"
    expected: bool  # True: nothing to measure by design (passes); False: a problem to look at (warns)


def no_reference_file(batch: str, baselines_dir: str | Path) -> str:
    return f"there is no reference file {Path(baselines_dir) / batch}.jsonl (or .parquet)"


def unmeasured(threshold: Threshold, summary: dict[str, Any], baselines_dir: str | Path) -> Unmeasured:
    """Why ``threshold``'s figure is missing from ``summary``, told from the summary's counts."""
    n = summary.get("n_images") or 0
    if n == 0:
        return Unmeasured("the batch has no image", expected=True)
    if threshold.column == "metadata_accuracy":
        if summary.get("baseline_file") is None:
            return Unmeasured(f"{no_reference_file(summary['batch'], baselines_dir)} to compare with", expected=True)
        return Unmeasured(
            f"the reference file {summary['baseline_file']} covers none of the batch's {n} images "
            f"({summary.get('baseline_records') or 0} image records loaded, {summary.get('baseline_orphans') or 0} "
            f"match no image of the batch, {summary.get('baseline_problems') or 0} lines did not load)",
            expected=False,
        )
    failed = round((summary.get("error_rate") or 0.0) * n)  # images without metadata
    if threshold in QUALITY_THRESHOLDS and failed < n:
        own = summary.get("n_model_outputs") or 0
        return Unmeasured(f"the batch has {own} outputs written by the model itself (fallbacks are not judged; "
                          "category entropy needs 8)", expected=True)
    if threshold.column == "end_to_end_p95_ms":
        reused = summary.get("reused_images") or 0
        if reused and reused + failed == n:
            also = f"; the other {failed} got no metadata" if failed else ""
            return Unmeasured(f"every result was reused from an earlier run ({reused} of {n} images{also}), "
                              "so no image was timed in this run", expected=True)
        return Unmeasured(f"no image was timed in this run ({failed} of {n} images got no metadata, {reused} reused)",
                          expected=False)
    return Unmeasured(f"there is no LLM output to judge ({failed} of {n} images got no metadata, no cluster label)",
                      expected=False)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    severity: AssetCheckSeverity
    value: float | None
    limit: float
    message: str
    measured: bool = True


def evaluate(threshold: Threshold, summary: dict[str, Any], settings: EvalSettings,
             baselines_dir: str | Path) -> Outcome:
    limit = float(getattr(settings, threshold.setting))
    raw = summary.get(threshold.column)
    if raw is None:
        why = unmeasured(threshold, summary, baselines_dir)
        return Outcome(why.expected, AssetCheckSeverity.WARN, None, limit, f"not measured because {why.reason}",
                       measured=False)
    value = raw * threshold.scale
    passed = value >= limit if threshold.minimum else value <= limit
    relation = ("≥" if passed else "<") if threshold.minimum else ("≤" if passed else ">")
    return Outcome(passed, threshold.severity, value, limit,
                   f"{threshold.figure} = {value:.4g} {relation} {threshold.setting} = {limit:g}")


def _partitioned_check(**kwargs):
    """``asset_check`` per batch partition, so each batch's result shows on that batch.

    Partitioned checks are a preview feature of Dagster 1.13; its warning is silenced here
    only, as this is the one place that relies on it."""
    def decorate(fn):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PreviewWarning)
            return asset_check(partitions_def=batch_partitions, **kwargs)(fn)

    return decorate


def _make_threshold_check(threshold: Threshold):
    @_partitioned_check(asset=AssetKey("eval_summary"), name=threshold.check, description=threshold.description)
    def _check(eval_summary: pa.Table, eval_settings: EvalSettings,
               settings: PixelsiftSettings) -> AssetCheckResult:
        summary = eval_summary.to_pylist()[0]
        outcome = evaluate(threshold, summary, eval_settings, settings.baselines_dir)
        metadata = {
            "measured": MetadataValue.bool(outcome.measured),
            "value": MetadataValue.float(outcome.value) if outcome.value is not None else MetadataValue.text("–"),
            "limit": MetadataValue.float(outcome.limit),
            "result": MetadataValue.text(outcome.message),
            "headline": MetadataValue.md(headline_markdown(summary, eval_settings)),
        }
        return AssetCheckResult(passed=outcome.passed, severity=outcome.severity, metadata=metadata,
                                description=outcome.message)

    return _check


@_partitioned_check(asset=AssetKey("gemini_baseline"),
                    description="Every line of the baseline file loaded (a bad line is skipped, and listed here).")
def baseline_loads_cleanly(context: AssetCheckExecutionContext, gemini_baseline: pa.Table,
                           settings: PixelsiftSettings) -> AssetCheckResult:
    if all(file is None for file in gemini_baseline.column("file").to_pylist()):
        # A batch without a reference file has no line that failed to load: nothing to warn about.
        return AssetCheckResult(
            passed=True, severity=AssetCheckSeverity.WARN, metadata={"measured": MetadataValue.bool(False)},
            description=f"not measured because {no_reference_file(context.partition_key, settings.baselines_dir)}",
        )
    problems = [r for r in gemini_baseline.to_pylist() if r["record"] == PROBLEM]
    table = "\n".join(f"| {p['line']} | {p['problem'].replace('|', '/')} |" for p in problems[:50])
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "measured": MetadataValue.bool(True),
            "problems": MetadataValue.int(len(problems)),
            "lines": MetadataValue.md("| line | reason |\n|---|---|\n" + table if problems else "none"),
        },
    )


eval_asset_checks = [_make_threshold_check(t) for t in THRESHOLDS] + [baseline_loads_cleanly]
