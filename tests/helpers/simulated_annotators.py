"""SIMULATED annotators for tests: Label Studio users created through the API whose annotations the test writes
with chosen masks and verdicts (``completed_by``). Nobody real draws anything here; the masks are the test's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from labeling.push import brush_result

CHOICE = {"accept": "accept", "no_target": "no target", "reject": "reject"}


@dataclass(frozen=True)
class SimulatedAnnotator:
    """A Label Studio user driven by a test (clearly not a person)."""

    user_id: int
    email: str

    def annotate(self, client: Any, task_id: int, verdict: str, mask: np.ndarray | None = None) -> dict[str, Any]:
        return client.create_annotation(task_id, result(verdict, mask), completed_by=self.user_id, lead_time=1.0)


def result(verdict: str, mask: np.ndarray | None = None) -> list[dict[str, Any]]:
    out = brush_result(mask) if mask is not None else []
    out.append({"from_name": "verdict", "to_name": "image", "type": "choices",
                "value": {"choices": [CHOICE[verdict]]}})  # fmt: skip
    return out


def simulated_annotator(client: Any, name: str) -> SimulatedAnnotator:
    """Find or create the Label Studio user ``simulated-NAME@geolabel.test`` (in the token owner's organisation)."""
    email = f"simulated-{name}@geolabel.test"
    users = client.request("GET", "/api/users")
    for u in users if isinstance(users, list) else users.get("results", []):
        if u.get("email") == email:
            return SimulatedAnnotator(int(u["id"]), email)
    u = client.request("POST", "/api/users", json_body={"email": email, "username": f"simulated-{name}"})
    return SimulatedAnnotator(int(u["id"]), email)
