"""The CPUs this process may use: its container's CPU limit (the cgroup's CPU quota), which on a
cluster is what a pod gets, whatever the node's core count is."""

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_v2_path(proc_cgroup: str) -> str | None:
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU limit in CPUs (1.5 for `limits.cpu: 1500m`), or None when there is none."""
    try:
        own = _cgroup_v2_path(proc_cgroup.read_text())
    except OSError:
        own = None
    # cgroup v2: cpu.max is "<quota> <period>" or "max <period>"; in a container the cgroup
    # namespace makes the root the container's own group.
    for directory in ([root / own.lstrip("/")] if own else []) + [root]:
        try:
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        return None if quota == "max" else int(quota) / int(period)
    # cgroup v1: cpu.cfs_quota_us is -1 without a limit.
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
