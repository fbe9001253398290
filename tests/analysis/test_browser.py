"""report.html opens in headless Chromium, offline, and the screenshot shows a stability map."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")


def _viridis_pixels(rgb: np.ndarray) -> int:
    """Pixels within a few levels of a viridis colour: the stability map's heat-map cells."""
    lut = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.int16)
    px = rgb.reshape(-1, 3).astype(np.int16)[::7]  # a sample is plenty
    saturated = px.max(axis=1) - px.min(axis=1) > 40  # leave out greys, white and black
    px = px[saturated]
    dist = np.abs(px[:, None, :] - lut[None, :, :]).max(axis=2).min(axis=1)
    return int((dist <= 6).sum()) * 7


@pytest.mark.integration
def test_report_renders_in_headless_chromium(demo_report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium package is not installed (the CI script installs it)")
    shot = tmp_path / "shot.png"
    # No "#stability" fragment: headless screenshots of a fragment URL come out blank. The stability maps
    # sit right after the claims, inside the first 2000 pixels.
    url = (demo_report / "report.html").resolve().as_uri()
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[:2] == (2000, 1200)
    assert rgb.std() > 10  # not a blank page
    assert _viridis_pixels(rgb) > 20_000  # the stability map's heat-map cells are on screen
