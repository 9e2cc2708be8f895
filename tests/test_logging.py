"""FASTGEN_LOG_LEVEL: backend decisions go to the ``fastgen`` logger's own handler; the root
logger (the application's) is left alone."""
import logging

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
