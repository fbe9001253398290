"""How the report's sections write numbers: percentages, mean ± std, configurations, and the images
they embed; shared by :mod:`analysis.sections` and :mod:`analysis.failure_sections`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.render import Image

MAX_ROWS = 60  # longer per-trial tables are cut in md/html (report.json keeps every row)


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


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
