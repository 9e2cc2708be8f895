"""FASTGEN_LOG_LEVEL: backend decisions go to the ``fastgen`` logger's own handler; the root
logger (the application's) is left alone."""
import logging

import pytest
import torch

from fastgen.ops import _backend


def test_debug_log_uses_its_own_handler_and_leaves_the_root_alone(monkeypatch, capsys):
    log, root = logging.getLogger("fastgen"), logging.getLogger()
    root_handlers, state = list(root.handlers), (list(log.handlers), log.level, log.propagate)
    monkeypatch.setenv("FASTGEN_LOG_LEVEL", "debug")
    _backend._configure_logging.cache_clear()
    try:
        assert _backend.choose_backend("masked_conv2d", torch.empty(1), "reference") == "reference"
        assert root.handlers == root_handlers
        assert "masked_conv2d: reference backend" in capsys.readouterr().err
    finally:
        log.handlers[:], log.level, log.propagate = state[0], state[1], state[2]
        _backend._configure_logging.cache_clear()


def test_use_backend_overrides_the_environment_inside_its_block(monkeypatch):
    """ops.use_backend: ops without their own backend= run on it, over FASTGEN_BACKEND; an op's
    backend= still wins; the previous choice comes back after the block (also on an error)."""
    from fastgen import ops
    from fastgen.ops import _backend
    monkeypatch.setenv("FASTGEN_BACKEND", "triton")
    with ops.use_backend("reference"):
        assert _backend.requested_backend() == "reference"
        assert _backend.requested_backend("triton") == "triton"
        with ops.use_backend("triton"):
            assert _backend.requested_backend() == "triton"
        assert _backend.requested_backend() == "reference"
    assert _backend.requested_backend() == "triton"
    with pytest.raises(KeyError):
        with ops.use_backend("reference"):
            raise KeyError("inside")
    assert _backend.requested_backend() == "triton"
    with pytest.raises(ValueError, match="use_backend"):
        with ops.use_backend("cuda"):
            pass
