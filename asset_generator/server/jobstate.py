"""What a server says of one handle's work (``Server.job_states``), in words every side shares.

Kept apart from ``types`` so that the registry's view of our jobs (``jobs``), which every
``cancel`` loads, does not build the seam's dataclasses and protocols when nothing is asked.
"""

from __future__ import annotations

QUEUED, RUNNING, IDLE, GONE = "queued", "running", "idle", "gone"
ACTIVE_STATES = frozenset({QUEUED, RUNNING})
