"""`edgeplex placement` for a terminal: a running server's placement report (`GET
/v2/edgeplex/placement`) as tables that fit 100 columns, one block per model with `--wide`, or
the raw JSON.

The default view answers "what runs where, and why" at a glance: a header (cores, memory), the
processors, and one row per model with its runs compacted (`2x ort t1`), the capacity estimate,
its memory and the decision's one-line summary, truncated with … to fit. `--wide` shows
everything the report holds, wrapped to the same width. Only plain text: the caller prints it.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import EdgeplexError

MAX_WIDTH = 100  # never assume a wider terminal unless asked
MIN_WIDTH = 60  # below this the tables stop making sense; narrower terminals wrap
ELLIPSIS = "…"
UNKNOWN = "–"
# Backend names as the runs column spells them; others are shown whole.
SHORT_BACKENDS = {"onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt"}
TURNS_MARK = "*"
WHY_MIN = 30  # columns the why column keeps before the runs and names give way
WHY_LINES = 2  # lines a model's why may take in the default view
WHY_STACKED = 20  # narrower than this, the why goes under its row instead of beside it
SLOWDOWN_MEANING = "observed/profiled service time"
CAPACITY_MEANING = "the capacity the allocator expects of the placement"


class PlacementReportError(EdgeplexError):
    """The placement report is not shaped as `GET /v2/edgeplex/placement` answers."""


def default_width() -> int:
    """The terminal's width, at most MAX_WIDTH (and at least MIN_WIDTH): output piped or in a wide
    window still fits 100 columns, as documented."""
    columns = shutil.get_terminal_size((MAX_WIDTH, 24)).columns
    return max(MIN_WIDTH, min(columns, MAX_WIDTH))


def render_placement(report: Mapping[str, Any], *, wide: bool = False, as_json: bool = False,
                     width: int | None = None) -> str:
    """The report as text: tables (default), one block per model (`wide`) or pretty JSON
    (`as_json`). Every line fits `width` columns (default: `default_width()`), except JSON."""
    if as_json:
        return json.dumps(report, indent=2, sort_keys=False)
    models = _check(report)
    width = default_width() if width is None else width
    if width < MIN_WIDTH:
        raise PlacementReportError(f"width {width} is too narrow for the placement view (at least {MIN_WIDTH})")
    lines = _header(report, width) + [""] + _processors(report, width) + [""]
    lines += _wide_models(models, width) if wide else _models_table(models, width)
    return "\n".join(lines)


# -- input -----------------------------------------------------------------------------------


def _check(report: Any) -> list[Mapping[str, Any]]:
    """The report's models, after checking the shape the views rely on (a clear error otherwise)."""
    if not isinstance(report, Mapping):
        raise PlacementReportError(f"placement report: expected a JSON object, got {type(report).__name__}")
    models = report.get("models")
    if not isinstance(models, list):
        raise PlacementReportError("placement report: 'models' is missing or not a list")
    for index, model in enumerate(models):
        if not isinstance(model, Mapping) or not isinstance(model.get("model"), str):
            raise PlacementReportError(f"placement report: models[{index}] has no 'model' name")
        groups = model.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
            raise PlacementReportError(f"placement report: {model['model']}: 'groups' is not a list of objects")
    processors = report.get("processors", [])
    if not isinstance(processors, list) or not all(isinstance(p, Mapping) for p in processors):
        raise PlacementReportError("placement report: 'processors' is not a list of objects")
    return list(models)


def _number(value: Any) -> float:
    """A figure of the report as a float; anything else (absent, null, text) reads as 0."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


# -- small formatters ------------------------------------------------------------------------


def fit(text: str, width: int) -> str:
    """`text` on one line, cut to `width` columns with … when longer."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS if width > 0 else ""


def _mb(value: Any) -> str:
    bytes_ = _number(value)
    return f"{bytes_ / 1e6:.1f}" if bytes_ > 0 else UNKNOWN


def _rate(value: Any) -> str:
    rate = _number(value)
    return f"{rate:.1f}" if rate > 0 else UNKNOWN


def _clock(at: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) and at > 0 else UNKNOWN


def run_label(group: Mapping[str, Any]) -> str:
    """One group compactly: `2x ort t1`; the processor only when not cpu (then no threads: an
    accelerator's compute is not on the intra-op pool), the variant only when not fp32."""
    backend = str(group.get("backend", "?"))
    parts = [f"{group.get('instances', '?')}x", SHORT_BACKENDS.get(backend, backend)]
    processor = str(group.get("processor", "cpu"))
    if processor != "cpu":
        parts.append(processor)
    variant = str(group.get("variant", "fp32"))
    if variant != "fp32":
        parts.append(variant)
    if processor == "cpu":
        parts.append(f"t{group.get('threads', '?')}")
    return " ".join(parts)


def _run_full(group: Mapping[str, Any]) -> str:
    """One group in full, as --wide shows it."""
    cap = group.get("max_batch", 0)
    batch = f", batches of up to {cap}" if isinstance(cap, int) and cap > 1 else ", no batching"
    return (f"{group.get('instances', '?')}x {group.get('backend', '?')}/{group.get('processor', '?')}/"
            f"{group.get('variant', '?')}, {group.get('threads', '?')} thread(s){batch}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int], width: int) -> list[str]:
    """Columns sized to their widest cell, two spaces apart; `right` aligned right. A row of one
    cell is a free line under the one before (not a column). The caller has fitted the cells;
    a line still over `width` is cut with …"""
    table = [r for r in rows if len(r) == len(header)]
    sizes = [max([len(header[i])] + [len(r[i]) for r in table]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(header):
            return " ".join(cells).rstrip()
        out = "  ".join(c.rjust(sizes[i]) if i in right else c.ljust(sizes[i]) for i, c in enumerate(cells))
        return out.rstrip()

    lines = [line(header)] + [line(r) for r in rows]
    return [x if len(x) <= width else x[: width - 1] + ELLIPSIS for x in lines]


def _wrap(label: str, text: str, width: int, indent: int = 2, label_width: int = 13) -> list[str]:
    """`label  text` wrapped to `width`, continuation lines under the text."""
    lead = " " * indent + label.ljust(label_width) + " "
    wrapped = textwrap.wrap(str(text), width=width, initial_indent=lead, subsequent_indent=" " * len(lead),
                            break_long_words=True, break_on_hyphens=False)
    return wrapped or [lead.rstrip()]


# -- the parts -------------------------------------------------------------------------------


def _header(report: Mapping[str, Any], width: int) -> list[str]:
    used = _number(report.get("memory_used"))
    budget = _number(report.get("memory_budget"))
    memory = f"memory {used / 1e6:.0f} MB used" + (
        f" of {budget / 1e6:.0f} MB ({100 * used / budget:.0f}%)" if budget > 0 else " (no budget)")
    return textwrap.wrap(f"cores {report.get('cores', '?')} · {memory}", width=width) or [""]


def _processors(report: Mapping[str, Any], width: int) -> list[str]:
    processors = report.get("processors", [])
    if not processors:
        return ["processors: none reported"]
    header = ["processor", "kind", "capacity", "in use", "busy token-s", "models"]
    rows = [[str(p.get("name", "?")), str(p.get("kind", "?")), str(p.get("capacity", "?")), str(p.get("in_use", "?")),
             f"{_number(p.get('busy_seconds')):.1f}", ", ".join(p.get("models", [])) or UNKNOWN] for p in processors]
    fixed = max([len(header[0])] + [len(r[0]) for r in rows]) + max([len(header[1])] + [len(r[1]) for r in rows])
    room = width - (fixed + len("capacity") + len("in use") + len("busy token-s") + 5 * 2)
    for row in rows:
        row[5] = fit(row[5], max(room, 6))
    return _table(header, rows, {2, 3, 4}, width)


def _why(model: Mapping[str, Any]) -> str:
    """The one line that explains the row: the explanation's summary, else why it cannot run
    (a failed model), else the placement's reason."""
    explanation = model.get("explanation")
    summary = explanation.get("summary") if isinstance(explanation, Mapping) else None
    failure = model.get("reason_unavailable")
    if model.get("state") not in (None, "READY") and failure:
        return str(failure)
    return str(summary or model.get("reason") or failure or UNKNOWN)


def _models_table(models: Sequence[Mapping[str, Any]], width: int) -> list[str]:
    """One row per model; a row takes more lines where it runs as several groups (one per line)
    and its why is long (wrapped to as many lines, at least WHY_LINES, then cut with …)."""
    if not models:
        return ["models: none loaded"]
    header = ["model", "state", "runs", "req/s", "mem MB", "why"]
    turns = any(m.get("taking_turns") for m in models)
    states = [str(m.get("state", "?")) + (TURNS_MARK if m.get("taking_turns") else "") for m in models]
    run_lists = [[run_label(g) for g in m.get("groups", [])] or [UNKNOWN] for m in models]
    rates = [_rate(m.get("estimated_capacity")) for m in models]
    mems = [_mb(m.get("memory_bytes")) for m in models]

    def natural(cells: Sequence[str], title: str, cap: int) -> int:
        return min(max(len(title), *(len(c) for c in cells)), cap)

    name_w = natural([m["model"] for m in models], header[0], 20)
    state_w = natural(states, header[1], 12)
    run_w = natural([" + ".join(r) for r in run_lists], header[2], 24)
    rate_w, mem_w = natural(rates, header[3], 12), natural(mems, header[4], 12)
    fixed = state_w + rate_w + mem_w + 5 * 2  # five gaps of two spaces
    # The why column keeps WHY_MIN: the runs column gives way first (down to its widest single
    # group, one group per line), then the names (cut with …).
    run_floor = natural([r for runs in run_lists for r in runs], header[2], 24)
    run_w = max(run_floor, min(run_w, width - fixed - name_w - WHY_MIN))
    name_w = max(12, min(name_w, width - fixed - run_w - WHY_MIN))
    why_w = width - fixed - name_w - run_w
    stacked = why_w < WHY_STACKED  # a narrow terminal: each why on its own lines under its row
    if stacked:
        header, run_w = header[:-1], min(run_w, width - fixed + 2 - name_w)
    rows: list[list[str]] = []
    for model, state, runs, rate, mem in zip(models, states, run_lists, rates, mems, strict=True):
        joined = " + ".join(runs)
        run_lines = [joined] if len(joined) <= run_w else [r + (" +" if i < len(runs) - 1 else "")
                                                           for i, r in enumerate(runs)]
        if stacked:
            why = _wrap_cut(_why(model), width - 4, WHY_LINES)
            rows += [[fit(model["model"], name_w), fit(state, state_w), fit(run_lines[0], run_w), rate, mem]]
            rows += [["", "", fit(extra, run_w), "", ""] for extra in run_lines[1:]]
            rows += [["    " + line] for line in why]
            continue
        why = _wrap_cut(_why(model), why_w, max(WHY_LINES, len(run_lines)))
        for i in range(max(len(run_lines), len(why))):
            first = i == 0
            rows.append([fit(model["model"], name_w) if first else "", fit(state, state_w) if first else "",
                         fit(run_lines[i], run_w) if i < len(run_lines) else "", rate if first else "",
                         mem if first else "", why[i] if i < len(why) else ""])
    lines = _table(header, rows, {3, 4}, width)
    notes = [f"req/s: {CAPACITY_MEANING} ({UNKNOWN} not known yet); mem MB: resident now."]
    if turns:
        notes.append(f"{TURNS_MARK} taking turns: too little memory for every model at once, so they swap in and out.")
    notes.append("--wide: each model's figures, bound config fields, rejected candidates; --json: the raw report.")
    return lines + [""] + [x for note in notes for x in textwrap.wrap(note, width=width)]


def _wrap_cut(text: str, width: int, most: int) -> list[str]:
    """`text` wrapped to `width`, at most `most` lines; the last cut with … if more was left."""
    lines = textwrap.wrap(" ".join(text.split()), width=width, break_long_words=True, break_on_hyphens=False)
    if len(lines) <= most:
        return lines or [""]
    kept = lines[: most - 1]
    rest = " ".join(lines[most - 1:])
    return kept + [rest[: width - 1] + ELLIPSIS]


def _wide_models(models: Sequence[Mapping[str, Any]], width: int) -> list[str]:
    if not models:
        return ["models: none loaded"]
    lines: list[str] = []
    for model in models:
        lines += _wide_model(model, width) + [""]
    return lines[:-1]


def _wide_model(model: Mapping[str, Any], width: int) -> list[str]:
    """Everything the report holds about one model."""
    state = str(model.get("state", "?"))
    lines = [fit(f"{model['model']}  {state}", width)]
    groups = model.get("groups", [])
    runs = [_run_full(g) for g in groups] or ["nothing (not placed)"]
    for i, run in enumerate(runs):
        lines += _wrap("runs" if i == 0 else "", run, width)
    given = model.get("explanation")
    explanation: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    source = explanation.get("source")
    rate = _rate(model.get("estimated_capacity"))
    lines += _wrap("req/s", f"{rate} ({CAPACITY_MEANING}" + (f"; figures {source}" if source else "") + ")", width)
    slowdown = _number(model.get("observed_slowdown"))
    lines += _wrap("slowdown", (f"{slowdown:.2f}" if slowdown > 0 else UNKNOWN) + f" ({SLOWDOWN_MEANING})", width)
    lines += _wrap("memory", f"{_mb(model.get('memory_bytes'))} MB resident", width)
    lines += _wrap("takes turns", "yes: too little memory for every model at once" if model.get("taking_turns")
                   else "no", width)
    if model.get("reason_unavailable"):
        lines += _wrap("unavailable", model["reason_unavailable"], width)
    placed = state == "READY" or model.get("groups")
    if explanation.get("summary"):
        lines += _wrap("why", explanation["summary"], width)
    lines += _wrap("placed by" if placed else "reason", model.get("reason") or UNKNOWN, width)
    bound = explanation.get("bound")
    if isinstance(bound, list) and bound:
        lines += _wrap("bound", ", ".join(map(str, bound)) + " (set in the model's config: the allocator keeps them)",
                       width)
    rejected = explanation.get("rejected")
    if isinstance(rejected, list):
        for i, item in enumerate(rejected):
            text = (f"{item.get('config', '?')}: {item.get('reason', '?')}" if isinstance(item, Mapping) else str(item))
            lines += _wrap("rejected" if i == 0 else "", text, width)
    if explanation.get("would_change"):
        lines += _wrap("would change", explanation["would_change"], width)
    last = model.get("last_decision")
    if isinstance(last, Mapping):
        change = f"{_clock(last.get('at'))} {last.get('placement') or ''}".strip()
        reason = last.get("reason")
        lines += _wrap("last change", change + (f": {reason}" if reason else ""), width)
    else:
        lines += _wrap("last change", "none yet", width)
    return lines
