"""Quieting a library's logger for one call whose report invc gives in its own words."""
from __future__ import annotations

import logging
from contextlib import contextmanager


@contextmanager
def quiet(logger_name: str):
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
