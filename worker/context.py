"""What a handler gets besides its args: the hypervisor, options and the caller's ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.config import Config
from worker.hypervisor import Hypervisor
from worker.paths import InstancePaths


@dataclass
class Context:
    """Per-message handler context; handlers read it and never keep it."""

    hypervisor: Hypervisor
    config: Config
    paths: InstancePaths
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
