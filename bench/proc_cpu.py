"""CPU time of a process tree, read from /proc, to charge a run's work to a server."""

import os

from proc_memory import PROC, tree_pids

TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User and system time of the tree, with that of children it has reaped.

    proc(5): utime and stime count a process's own threads; cutime and cstime
    count children it waited for, so that a worker that exited in the run (a
    Dovecot lmtp process at its client limit) is still charged to its parent.
    """
    ticks = 0
    for pid in tree_pids(root):
        try:
            text = (PROC / str(pid) / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name: state is 3, utime 14 ... cstime 17.
        fields = text.rsplit(")", 1)[1].split()
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / TICKS
