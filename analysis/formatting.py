"""How the report's sections write numbers: percentages, mean ± std, configurations, and the images
they embed; shared by :mod:`analysis.sections` and :mod:`analysis.failure_sections`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.render import Image
from trainers.outcome import COLLAPSED, DIVERGED, STALLED

MAX_ROWS = 60  # longer per-trial tables are cut in md/html (report.json keeps every row)


# How the report names each failure kind of trainers.outcome.FAILURE_KINDS: its map symbol and its meaning.
# A kind added there and not here still shows, as "?" and its name (kind_symbol, kind_words).
FAILURE_TEXT = {
    DIVERGED: ("×", "a divergence rule fired (a non-finite or exploding loss, a spike)"),
    COLLAPSED: ("○", "stayed finite but ended at chance accuracy"),
    STALLED: ("□", "stayed finite but did not fit: its final train loss stayed above f × min(initial loss, ln C), "
                   "f = divergence.stall_loss_frac"),
}


def kind_symbol(kind: str) -> str:
    return FAILURE_TEXT.get(kind, ("?", ""))[0]


def kind_words(kind: str) -> str:
    return FAILURE_TEXT.get(kind, ("", f"failed ({kind})"))[1]


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


def rate_text(n: int, total: int, rate: float | None, ci: Sequence[float] | None) -> str:
    """"3/15 (20.0% [7, 45])": a count, its rate and the rate's 95% interval in whole percent."""
    if not total:
        return "—"
    return f"{n}/{total} ({pct(rate)}" + (f" [{pct(ci[0], 0)}, {pct(ci[1], 0)}]" if ci else "") + ")"


def fmt_stat(st: Mapping[str, Any], scale: float = 100.0, unit: str = "%", digits: int = 1) -> str:
    if st["mean"] is None:
        return "n/a"
    s = f"{st['mean'] * scale:.{digits}f}"
    if st["std"] is not None:
        s += f" ± {st['std'] * scale:.{digits}f}"
    return s + unit + (f" (n={st['n']})" if st["n"] != 1 else " (1 seed)")


def fmt_config(cfg: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items()) or "-"


def fmt_scale(s: float | None) -> str:
    return "-" if s is None else f"{s:g}"


def fmt_value(x: Any) -> str:
    return "—" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def image_blocks(out: Path, name: str | None, caption: str) -> list:
    return [Image(out / name, caption)] if name else []
