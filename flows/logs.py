"""The flows' logger: Prefect's run logger inside a flow or task run, the ``geolabel.flows`` logger outside one."""

from __future__ import annotations

import logging
from typing import Any


def get_logger() -> Any:
    """Prefect's run logger when called inside a flow/task run, else ``logging.getLogger("geolabel.flows")``."""
    from prefect import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow/task run (plain function calls, .fn())
        return logging.getLogger("geolabel.flows")
