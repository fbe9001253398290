"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import tempfile

import pytest
import torch


@pytest.fixture
def one_thread_and_private_tmp(tmp_path, monkeypatch):
    """1 torch thread (fast and deterministic on the shared 2-core machine); the loop's and LocalSession's
    checkpoint temp dirs land in tmp_path, so nothing leaks into /tmp."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield
    torch.set_num_threads(threads)
