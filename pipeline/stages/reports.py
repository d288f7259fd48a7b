"""What a classify run did: the report ``classify`` and a method's own stage return."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClassifyReport:
    run_id: int
    method: str
    images: int = 0
    seconds: float = 0.0
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
