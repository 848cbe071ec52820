"""Test-only crash injection: ``OPMIX_FAULT=<point>:<count>`` SIGKILLs the process at the count-th hit of a point.

``OPMIX_FAULT=hold@<point>:<count>`` instead stops the process there until something kills it, so a test can look
at a run caught mid-step (``opmix status`` on a running run) however fast the machine is.

The fault test suite (``tests/faults``) uses it to prove that a run killed anywhere resumes to the same result. It
is a no-op unless the variable is set. Several faults may be given, comma-separated; a point name may itself hold
colons (``step:final:3`` is the point ``step:final``, count 3). Points in the code:

- ``tokenize``: a domain's train tokens are on disk, its eval tokens and cache metadata not yet;
- ``step:<stage>``: an optimizer step of training stage ``<stage>`` finished (after any periodic checkpoint);
- ``checkpoint``: a trainer checkpoint is half written (weights only, in its temporary folder);
- ``proxy``: one proxy's row was appended to the proxies table;
- ``mark:<step>``: every artifact of ``<step>`` is written but its completion marker is not.

SIGKILL, not an exception: nothing (no ``finally``, no atexit, no buffered write) runs after it, as in a real
power loss or OOM kill.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "OPMIX_FAULT"
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Count a hit of ``name``; kill this process if ``OPMIX_FAULT`` asks for a crash at this hit."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _hits[name] = _hits.get(name, 0) + 1
    for fault in spec.split(","):
        action, _, fault = fault.strip().rpartition("@")
        point, _, count = fault.rpartition(":")
        if point == name and count.isdigit() and int(count) == _hits[name]:
            if action == "hold":
                while True:
                    time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)
