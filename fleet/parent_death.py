"""A child of `llamagrid serve` exits when the supervisor dies, by any signal, SIGKILL included.

The supervisor puts its pid in ``LLAMAGRID_PARENT_PID`` when it spawns a worker or the gateway.
At startup the child calls exit_with_parent(): it asks the kernel for SIGTERM when its parent
dies (Linux ``prctl(PR_SET_PDEATHSIG)``), then compares getppid() with that pid. If they differ,
the supervisor died before the request was made (the child has been re-parented, and the
kernel will never send the signal), so the child exits at once.

- **SIGTERM, not SIGKILL.** The child stops as it does when the supervisor stops it: it drains
  its running requests within its ``--drain-grace-s``, then exits and frees its port. Nobody
  is left to SIGKILL it after the grace period, but both drains are bounded by it.
- **The parent thread.** The kernel sends the signal when the *thread* that spawned the child
  exits, not the process. The supervisor spawns from its event loop, on its main thread, which
  lives as long as the process does.
- **Only when asked.** A process started without the variable (by hand, by Kubernetes, by a
  test) is left alone. The variable is removed from the environment once read, so that a
  process the child starts does not inherit it.

This lives in fleet/, the package the processes of a fleet share: the worker and the gateway
both need it, may not import each other, and only the command line imports the supervisor.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

#: The supervisor's pid, as set in each child's environment.
PARENT_PID_ENV = "LLAMAGRID_PARENT_PID"
#: From <linux/prctl.h>.
PR_SET_PDEATHSIG = 1


def exit_with_parent(sig: signal.Signals = signal.SIGTERM) -> bool:
    """Ask for ``sig`` when the spawning supervisor dies; exit now if it already has.

    Returns whether the signal was requested (False: no supervisor pid in the environment, or
    not Linux). Raises SystemExit when the supervisor is already gone.
    """
    value = os.environ.pop(PARENT_PID_ENV, "")
    if not value.isdigit():
        return False
    expected = int(value)
    if not set_parent_death_signal(sig):
        return False
    if os.getppid() != expected:
        raise SystemExit(
            f"llamagrid: the supervisor (pid {expected}) exited before this process started"
        )
    return True


def set_parent_death_signal(sig: signal.Signals) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig) for this process; False where there is no such call."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    return True
