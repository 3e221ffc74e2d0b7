"""nova's own client for the interop tier: its CONF (global, parsed once), names, context.

nova's configuration is process-global, so one control exchange and one host
name serve every module that drives the worker through nova's ComputeAPI.
"""

from __future__ import annotations

import uuid
from typing import Any

#: nova's CONF is global and parsed once: one control exchange for the whole session.
EXCHANGE = f"nova_client_{uuid.uuid4().hex[:8]}"
HOST = f"nova-client-{uuid.uuid4().hex[:8]}"


def nova_context() -> Any:
    """An admin RequestContext of user-1 in project-1."""
    from nova import context

    return context.RequestContext(user_id="user-1", project_id="project-1", is_admin=True)
