"""`tuneterm inspect`: what a dataset looks like to the model, before any training.

One streaming pass over the data with the model's own tokenizer and chat template: the format and the evidence
for it, every invalid record with its line, token-length statistics with a histogram, how many tokens each
example trains, what a max length would cut, the pre-flight checks that would block a run, and a few examples
with the trained text highlighted and the masked text dim. Memory stays bounded by the number of examples (a few
integers each), so a 1 GB JSONL can be inspected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneterm.data.pipeline import EncodedExample, EncodeReport, encode_examples, read_examples
from tuneterm.data.prepare import FULLY_TRUNCATED_LIMIT
from tuneterm.data.records import Problem
from tuneterm.data.stats import Truncation, histogram, percentiles, suggest_max_length, truncation
from tuneterm.data.tokenize import IGNORE_INDEX, encode_batch


@dataclass
class Preview:
    where: str
    segments: list[tuple[str, bool]]
    """The rendered text in order, each piece flagged trained or masked."""
    trained_segments: list[str]
    trained_tokens: int
    total_tokens: int


@dataclass
class InspectReport:
    source: str
    format: str
    evidence: str
    records: int
    examples: int
    invalid: list[Problem]
    duplicates: list[Problem]
    unusable: list[Problem]
    """Examples the chat template cannot render or leaves without a trained token."""
    token_lengths: dict[str, Any]
    trained_tokens: dict[str, Any]
    suggested_max_length: int
    suggestion_why: str
    truncation: Truncation
    preview: list[Preview]
    blocking: list[str] = field(default_factory=list)
    """What would stop `tuneterm train` (pre-flight checks)."""
    warnings: list[str] = field(default_factory=list)


def inspect_data(source: str, tokenizer: Any, *, fmt: str = "auto", columns: dict[str, str] | None = None,
                 train_on: str = "responses", max_length: int | None = None, samples: int = 3,
                 context_length: int | None = None, memory_limited: bool = False) -> InspectReport:
    read, stream = read_examples(source, fmt, columns)
    if read.detection.format == "text":
        train_on = "all"
    encode = EncodeReport()
    lengths: list[int] = []
    trained: list[int] = []
    runs: list[list[tuple[int, int]]] = []
    preview: list[EncodedExample] = []
    for example in encode_examples(tokenizer, stream, train_on, encode):
        lengths.append(example.length)
        trained.append(example.trained_tokens)
        runs.append(example.trained_runs)
        if len(preview) < samples:
            preview.append(example)
    length_array, trained_array = np.array(lengths or [0]), np.array(trained or [0])
    suggested, why = suggest_max_length(length_array, context_length, memory_limited)
    limit = max_length or suggested
    lost = (sum(max(0, end - max(start, limit)) for start, end in example_runs) for example_runs in runs)
    cut = truncation(np.array(lengths), lost, np.array(trained), limit) if lengths else Truncation(limit, 0, 0, 0)
    report = InspectReport(
        source=source, format=read.detection.format, evidence=read.detection.evidence, records=read.records,
        examples=len(lengths), invalid=read.invalid, duplicates=read.duplicates,
        unusable=encode.template_failures + encode.untrained,
        token_lengths={**percentiles(length_array), "mean": round(float(length_array.mean()), 1),
                       "histogram": histogram(length_array)},
        trained_tokens={**percentiles(trained_array), "mean": round(float(trained_array.mean()), 1),
                        "total": int(trained_array.sum())},
        suggested_max_length=suggested, suggestion_why=why, truncation=cut,
        preview=[_preview(tokenizer, e) for e in preview])
    _checks(report, encode)
    return report


def _checks(report: InspectReport, encode: EncodeReport) -> None:
    if report.invalid:
        report.blocking.append(f"{len(report.invalid)} invalid records (a strict run stops; data.strict: false "
                               "leaves them out)")
    if encode.prompt_leaks:
        report.blocking.append(f"{len(encode.prompt_leaks)} examples would train on prompt text: "
                               + "; ".join(str(p) for p in encode.prompt_leaks[:3]))
    if report.unusable:
        report.blocking.append(f"{len(report.unusable)} examples cannot be trained on: "
                               + "; ".join(str(p) for p in report.unusable[:3]))
    cut = report.truncation
    if report.examples and cut.fully_truncated > FULLY_TRUNCATED_LIMIT * report.examples:
        report.blocking.append(f"{cut.fully_truncated} of {report.examples} examples lose their whole response at "
                               f"max_length {cut.max_length}")
    if report.examples == 0:
        report.blocking.append("no example can be trained on")
    if encode.missing_end_of_turn:
        report.warnings.append(f"{encode.missing_end_of_turn} examples: the chat template writes no end-of-turn "
                               "token after the assistant reply, so the model would not learn to stop")
    if encode.system_folded:
        report.warnings.append(f"the chat template refuses the system role: in {encode.system_folded} examples the "
                               "system prompt goes to the start of the first user message")
    if report.duplicates:
        report.warnings.append(f"{len(report.duplicates)} exact duplicates (training leaves them out)")


def _preview(tokenizer: Any, example: EncodedExample) -> Preview:
    text = example.rendered.text
    [encoded] = encode_batch(tokenizer, [example.rendered])
    segments: list[tuple[str, bool]] = []
    position = 0
    for (start, end), label in zip(encoded.offsets.tolist(), encoded.labels.tolist()):
        is_trained = bool(label != IGNORE_INDEX)
        start = max(start, position)
        if start > position:  # characters no token covers (rare) count as masked
            segments.append((text[position:start], False))
        if end > start:
            if segments and segments[-1][1] == is_trained:
                segments[-1] = (segments[-1][0] + text[start:end], is_trained)
            else:
                segments.append((text[start:end], is_trained))
        position = max(position, end)
    if position < len(text):
        segments.append((text[position:], False))
    decoded = [tokenizer.decode(example.input_ids[s:e].tolist()) for s, e in example.trained_runs]
    return Preview(example.where, segments, decoded, example.trained_tokens, example.length)


def report_to_json(report: InspectReport) -> dict[str, Any]:
    return {
        "source": report.source,
        "format": report.format,
        "evidence": report.evidence,
        "records": report.records,
        "examples": report.examples,
        "invalid": [{**p.location, "message": p.message} for p in report.invalid],
        "duplicates": [{**p.location, "message": p.message} for p in report.duplicates],
        "unusable": [{**p.location, "message": p.message} for p in report.unusable],
        "token_lengths": report.token_lengths,
        "trained_tokens": report.trained_tokens,
        "suggested_max_length": report.suggested_max_length,
        "suggestion_why": report.suggestion_why,
        "max_length": report.truncation.max_length,
        "truncated_examples": report.truncation.truncated_examples,
        "response_tokens_lost": report.truncation.response_tokens_lost,
        "fully_truncated_examples": report.truncation.fully_truncated,
        "blocking": report.blocking,
        "warnings": report.warnings,
        "preview": [{"where": p.where, "trained_segments": p.trained_segments, "trained_tokens": p.trained_tokens,
                     "total_tokens": p.total_tokens} for p in report.preview],
    }


def format_report(report: InspectReport, color: bool) -> str:
    """The human report; with color, trained text is bold green and masked text dim, else trained is ⟪marked⟫."""
    lines = [f"Data      {report.source}",
             f"Format    {report.format} ({report.evidence})",
             f"Records   {report.records:,} read, {report.examples:,} usable, {len(report.invalid):,} invalid, "
             f"{len(report.duplicates):,} duplicates"]
    for problem in report.invalid[:20]:
        lines.append(f"  invalid {problem}")
    if len(report.invalid) > 20:
        lines.append(f"  ... and {len(report.invalid) - 20} more (--json lists them all)")
    for problem in report.unusable[:10]:
        lines.append(f"  unusable {problem}")
    t = report.token_lengths
    lines.append(f"Tokens    p50 {t['p50']:,}  p90 {t['p90']:,}  p95 {t['p95']:,}  p99 {t['p99']:,}  max {t['max']:,}  "
                 f"mean {t['mean']:,}")
    top = max((b["count"] for b in t["histogram"]), default=1) or 1
    for bucket in t["histogram"]:
        bar = "#" * max(1 if bucket["count"] else 0, round(30 * bucket["count"] / top))
        lines.append(f"  {bucket['start']:>7,}-{bucket['end']:<7,} {bar} {bucket['count']:,}")
    trained = report.trained_tokens
    lines.append(f"Trained   tokens per example: p50 {trained['p50']:,}, mean {trained['mean']:,}, max {trained['max']:,}; "
                 f"{trained['total']:,} in all")
    lines.append(f"Length    suggested max_length {report.suggested_max_length} ({report.suggestion_why})")
    cut = report.truncation
    lines.append(f"          at max_length {cut.max_length}: {cut.truncated_examples:,} examples cut, "
                 f"{cut.response_tokens_lost:,} response tokens lost, {cut.fully_truncated:,} lose their whole "
                 "response")
    for message in report.blocking:
        lines.append(f"BLOCKS    {message}")
    for message in report.warnings:
        lines.append(f"Warning   {message}")
    body = "\n".join(lines)
    return body + "".join(_format_preview(p, color) for p in report.preview)


def _format_preview(preview: Preview, color: bool) -> str:
    header = f"\n\nExample   {preview.where}: {preview.trained_tokens} of {preview.total_tokens} tokens trained\n"
    if not color:
        return header + "".join(f"⟪{text}⟫" if trained else text for text, trained in preview.segments)
    return header + "".join(f"\033[1;32m{text}\033[0m" if trained else f"\033[2m{text}\033[0m"
                            for text, trained in preview.segments)
