"""`tuneterm inspect`: what a dataset looks like to the model, before any training.

The data summary of one source (summary.py: one streaming pass with the model's own tokenizer and chat
template), printed for a person or as JSON: the format and the evidence for it, every invalid record with its
line, token-length statistics with a histogram, how many tokens each example trains, what a max length would cut,
the findings that would block a run, and a few examples with the trained text highlighted and the masked text
dim. Memory stays bounded by the number of examples (a few integers each), so a 1 GB JSONL can be inspected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneterm.data.pipeline import Preview
from tuneterm.data.summary import DataSummary, DataView, SourceSummary, summarise_source
from tuneterm.errors import Problem
from tuneterm.work import Work


@dataclass(frozen=True)
class InspectReport:
    source: SourceSummary
    view: DataView

    @property
    def blocking(self) -> list[str]:
        return [str(f) for f in self.view.findings if f.level == "error"]

    @property
    def warnings(self) -> list[str]:
        return [str(f) for f in self.view.findings if f.level == "warning"]


def inspect_data(source: str, tokenizer: Any, *, fmt: str = "auto", columns: dict[str, str] | None = None,
                 train_on: str = "responses", reasoning: str = "auto", max_length: int | None = None, samples: int = 3,
                 context_length: int | None = None, memory_limited: bool = False, work: Work | None = None,
                 template_warnings: list[str] | None = None) -> InspectReport:
    summary = summarise_source(source, tokenizer, fmt=fmt, columns=columns, train_on=train_on, reasoning=reasoning,
                               work=work, previews=samples)
    view = DataSummary(summary, None, list(template_warnings or [])).view(
        val_size=0, seed=0, max_samples=None, max_length=max_length or "auto", context_length=context_length,
        strict=True, memory_limited=memory_limited)
    return InspectReport(summary, view)


def _located(problems: list[Problem]) -> list[dict[str, Any]]:
    return [{**p.location.to_json(), "message": p.message} for p in problems]


def report_to_json(report: InspectReport) -> dict[str, Any]:
    source, view = report.source, report.view
    cut = view.truncation
    return {
        "source": source.source,
        "format": source.detection.format,
        "evidence": source.detection.evidence,
        "records": source.read.records,
        "examples": source.examples,
        "invalid_count": source.invalid.count,
        "invalid": _located(source.invalid.items),
        "duplicates": _located(source.duplicates.items),
        "unusable": _located([*source.encode.template_failures.items, *source.encode.untrained.items]),
        "token_lengths": {**view.lengths, "histogram": view.histogram},
        "trained_tokens": view.trained_tokens,
        "holding": dict(source.encode.holding),
        "reasoning_tokens": source.encode.reasoning_tokens,
        "thinking": {str(mode).lower(): count for mode, count in source.encode.thinking.items()},
        "suggested_max_length": view.suggested_max_length,
        "suggestion_why": view.suggestion_why,
        "max_length": cut.max_length,
        "truncated_examples": cut.truncated_examples,
        "response_tokens_lost": cut.response_tokens_lost,
        "fully_truncated_examples": cut.fully_truncated,
        "blocking": report.blocking,
        "warnings": report.warnings,
        "preview": [{**p.location.to_json(), "trained_segments": p.trained_segments,
                     "trained_tokens": p.trained_tokens, "total_tokens": p.total_tokens,
                     "parts": [{"part": part, "text": text, "trained": trained}
                               for text, trained, part in p.segments if part]} for p in source.previews],
    }


def format_report(report: InspectReport, color: bool) -> str:
    """The human report; with color, trained text is bold green and masked text dim, else trained is ⟪marked⟫."""
    source, view = report.source, report.view
    lines = [f"Data      {source.source}",
             f"Format    {source.detection.format} ({source.detection.evidence})",
             f"Records   {source.read.records:,} read, {source.examples:,} usable, {source.invalid.count:,} invalid, "
             f"{source.duplicates.count:,} duplicates"]
    ordered = sorted(source.invalid.items, key=lambda p: p.location.order())
    for problem in ordered[:20]:
        lines.append(f"  invalid {problem}")
    if source.invalid.count > 20:
        lines.append(f"  ... and {source.invalid.count - 20:,} more (--json lists the first 1,000)")
    for problem in [*source.encode.template_failures.items, *source.encode.untrained.items][:10]:
        lines.append(f"  unusable {problem}")
    for label, line in (("Holds", holdings_line(source)), ("Thinking", thinking_line(source))):
        if line:
            lines.append(f"{label:<10}{line}")
    t = view.lengths
    lines.append(f"Tokens    p50 {t['p50']:,}  p90 {t['p90']:,}  p95 {t['p95']:,}  p99 {t['p99']:,}  max {t['max']:,}")
    top = max((b["count"] for b in view.histogram), default=1) or 1
    for bucket in view.histogram:
        bar = "#" * max(1 if bucket["count"] else 0, round(30 * bucket["count"] / top))
        lines.append(f"  {bucket['start']:>7,}-{bucket['end']:<7,} {bar} {bucket['count']:,}")
    trained = view.trained_tokens
    lines.append(f"Trained   tokens per example: p50 {trained['p50']:,}, max {trained['max']:,}; "
                 f"{trained['total']:,} in all")
    lines.append(f"Length    suggested max_length {view.suggested_max_length} ({view.suggestion_why})")
    cut = view.truncation
    lines.append(f"          at max_length {cut.max_length}: {cut.truncated_examples:,} examples cut, "
                 f"{cut.response_tokens_lost:,} response tokens lost, {cut.fully_truncated:,} lose their whole "
                 "response")
    for message in report.blocking:
        lines.append(f"BLOCKS    {message}")
    for message in report.warnings:
        lines.append(f"Warning   {message}")
    return "\n".join(lines) + "".join(format_preview(p, color) for p in source.previews)


_PART_COLOURS = {"": "32", "reasoning": "35", "tool call": "36", "tool result": "33"}
"""ANSI colours of the parts: answers green, reasoning magenta, tool calls cyan, tool results yellow."""


def format_preview(preview: Preview, color: bool) -> str:
    """Trained text bold (in colour) or ⟪marked⟫; a reasoning, tool-call or tool-result part is coloured, or named
    where it starts (⟦reasoning⟧...) without colour."""
    header = (f"\n\nExample   {preview.location.where()}: {preview.trained_tokens} of {preview.total_tokens} tokens "
              "trained\n")
    pieces = []
    for text, trained, part in preview.segments:
        if color:
            pieces.append(f"\033[{'1;' if trained else '2;'}{_PART_COLOURS[part]}m{text}\033[0m" if trained or part
                          else f"\033[2m{text}\033[0m")
        else:
            label = f"⟦{part}⟧" if part else ""
            pieces.append(f"⟪{label}{text}⟫" if trained else label + text)
    return header + "".join(pieces)


def holdings_line(source: SourceSummary) -> str | None:
    """"tool calls in 120 examples, ...; 4,210 trained tokens are reasoning (31%)", when the data holds any."""
    holding = source.encode.holding
    if not holding:
        return None
    held = ", ".join(f"{what} in {holding[what]:,} examples" for what in ("tool calls", "tool results", "tools",
                                                                           "reasoning") if holding[what])
    trained = int(source.trained.sum())
    share = f" ({source.encode.reasoning_tokens / trained:.0%})" if trained else ""
    reasoning = (f"; {source.encode.reasoning_tokens:,} trained tokens are reasoning{share}"
                 if holding["reasoning"] else "")
    return held + reasoning


def thinking_line(source: SourceSummary) -> str | None:
    """How a hybrid reasoning template renders the examples under data.reasoning (None for other templates)."""
    modes = source.encode.thinking
    if None in modes or not modes:
        return None
    return (f"thinking mode (reasoning trained) for {modes[True]:,} examples, no-think (the empty think block is "
            f"prompt) for {modes[False]:,}")
