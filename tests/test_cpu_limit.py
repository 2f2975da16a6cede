"""Workers fit their pod: the container's CPU limit (cgroup v2 cpu.max, or v1's CFS quota) sets
the API's worker count on a cluster, rounded down, at least 1, not the node's core count."""

from pathlib import Path

import pytest

from app import settings as settings_module
from app.cpu_limit import cpu_quota
from app.settings import Settings


def cgroup_v2(tmp_path: Path, cpu_max: str, nested: str = "") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    group = root / nested.lstrip("/") if nested else root
    group.mkdir(parents=True)
    (group / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"0::{nested or '/'}\n")
    return root, proc


def test_cgroup_v2_quota_in_cpus(tmp_path: Path) -> None:
    assert cpu_quota(*cgroup_v2(tmp_path / "a", "150000 100000")) == 1.5
    assert cpu_quota(*cgroup_v2(tmp_path / "b", "max 100000")) is None
    # Outside a cgroup namespace the process's own group is nested under the root.
    assert cpu_quota(*cgroup_v2(tmp_path / "c", "50000 100000", nested="/kubepods/pod1/api")) == 0.5


def test_cgroup_v1_quota_and_none(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("1:cpu:/\n")
    assert cpu_quota(root, proc) == 2.0
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(root, proc) is None
    assert cpu_quota(tmp_path / "nothing", proc) is None


@pytest.mark.parametrize(("quota", "workers"), [(1.0, 1), (0.5, 1), (1.9, 1), (2.5, 2), (16.0, 4)])
def test_a_pod_limited_to_n_cpus_starts_n_workers(monkeypatch: pytest.MonkeyPatch, quota: float, workers: int) -> None:
    monkeypatch.setattr(settings_module, "cpu_quota", lambda: quota)
    monkeypatch.setattr(settings_module.os, "cpu_count", lambda: 64)
    count, why = Settings(runtime="kubernetes", mlflow_uri="http://mlflow:5000").worker_plan()
    assert count == workers and "CPU limit" in why


def test_without_a_limit_the_cores_count_and_the_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "cpu_quota", lambda: None)
    monkeypatch.setattr(settings_module.os, "cpu_count", lambda: 3)
    assert Settings(runtime="kubernetes").worker_plan() == (3, "no CPU limit; 3 cores")
    assert Settings(runtime="kubernetes", workers=2).worker_plan() == (2, "MLOPS_WORKERS")
    assert Settings().worker_plan() == (1, "the local runtime")
