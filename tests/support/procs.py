"""Processes and sockets, read from /proc (Linux): a gunicorn master's workers, pending signals, the client ports
of the connections a worker holds, CPU time, memory. Used by the fault scenarios, the drain tests and bench/."""
from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` from field 3 (state) on: "pid (comm) state ppid ...", and comm may hold anything."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    """Live (not zombie) direct children of *pid*, sorted: a scan of /proc, no psutil needed."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat_fields(int(entry))
        except (OSError, ValueError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


def worker_pids(master_pid: int) -> set[int]:
    """The gunicorn workers: live processes whose parent is the master."""
    return set(children(master_pid))


def signal_pending(pid: int, sig: int) -> bool:
    """Whether *sig* is pending for process *pid* (sent, not handled yet: the process is stopped, for one)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & (1 << (sig - 1)):
                return True
    return False


def held_client_ports(pid: int, server_port: int) -> set[int]:
    """Client ports of the TCP connections to *server_port* that process *pid* holds (accepted, not closed):
    its socket fds (``/proc/PID/fd`` -> ``socket:[inode]``) matched with ``/proc/PID/net/tcp``."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
            if inode in inodes and state != "0A" and int(local.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(remote.rsplit(":", 1)[1], 16))
    return ports


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all threads) so far; 0 when it is gone."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of stat)


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
