"""The pipeline that steps created right now join (the `with Pipeline():` block)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

current_pipeline: ContextVar[Any] = ContextVar("stillhouse_current_pipeline", default=None)
