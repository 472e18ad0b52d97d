"""The thread policy: cores from affinity and cgroup quotas, the split, overrides, and the record."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from anonymize.cli import app
from anonymize.errors import UsageError
from anonymize.runtime_threads import cgroup_cpu_limit, plan_threads, split_budget
from tests.helpers import small_real


def _fake_root(tmp_path: Path, cgroup: str, mounts: list[tuple[str, str, str]], files: dict[str, str]) -> Path:
    root = tmp_path / "root"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    lines = [f"{30 + i} 23 0:{28 + i} / {mnt} rw,relatime - {fs} {fs} rw,{opts}" for i, (mnt, fs, opts) in enumerate(mounts)]
    (root / "proc/self/mountinfo").write_text("\n".join(lines) + "\n")
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_cgroup_v2_quota_tightest_along_the_path(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, "0::/jobs/run1\n", [("/sys/fs/cgroup", "cgroup2", "nsdelegate")], {
        "/sys/fs/cgroup/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/jobs/cpu.max": "300000 100000\n",
        "/sys/fs/cgroup/jobs/run1/cpu.max": "150000 100000\n",
    })
    assert cgroup_cpu_limit(root) == pytest.approx(1.5)


def test_cgroup_v2_unlimited_and_v1_quota(tmp_path: Path) -> None:
    root = _fake_root(tmp_path / "a", "0::/\n", [("/sys/fs/cgroup", "cgroup2", "")], {"/sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) is None
    # v1 (hybrid hierarchy, as on this CI machine): cpu,cpuacct controller, -1 = no quota
    root = _fake_root(tmp_path / "b", "4:cpu,cpuacct:/docker/abc\n0::/\n",
                      [("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "cpu,cpuacct"), ("/sys/fs/cgroup/unified", "cgroup2", "")], {
                          "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                          "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                          "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
                          "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                      })
    assert cgroup_cpu_limit(root) == pytest.approx(0.5)
    # a container whose cgroup namespace hides the path: the mount root's files are its own
    root = _fake_root(tmp_path / "c", "0::/not/visible\n", [("/sys/fs/cgroup", "cgroup2", "")],
                      {"/sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert cgroup_cpu_limit(root) == pytest.approx(2.0)
    assert cgroup_cpu_limit(tmp_path / "nothing") is None


def test_split_leaves_torch_headroom() -> None:
    for b in range(1, 65):
        t, w = split_budget(b)
        assert 1 <= w <= 4 and 1 <= t <= b
        assert b == 1 or t < b, b  # torch never takes every core: a busy neighbour cannot stall all its threads
        assert t >= 0.7 * b - 1, b  # ... but keeps most of a big machine
    assert split_budget(2) == (1, 2)


def test_plan_sources_and_overrides() -> None:
    p = plan_threads(env={}, cores=2.0)
    assert (p.budget, p.torch_threads, p.workers, p.source) == (2, 1, 2, "auto")
    assert plan_threads(env={}, cores=1.5).budget == 1  # a 1.5-core quota: one steady core
    assert plan_threads(env={}, cores=0.3).budget == 1
    p = plan_threads(env={"ANONYMIZE_THREADS": "8"}, cores=2.0)
    assert (p.budget, p.source, p.torch_threads, p.workers) == (8, "ANONYMIZE_THREADS", 6, 2)
    p = plan_threads(4, env={"ANONYMIZE_THREADS": "8", "OMP_NUM_THREADS": "7"}, cores=2.0)
    assert (p.budget, p.source, p.torch_threads, p.torch_source) == (4, "--threads", 3, "policy")
    p = plan_threads(env={"OMP_NUM_THREADS": "3"}, cores=2.0)
    assert (p.torch_threads, p.torch_source, p.workers) == (3, "OMP_NUM_THREADS", 2)
    p = plan_threads(workers=5, env={}, cores=2.0)
    assert (p.workers, p.workers_source) == (5, "--workers")
    for bad in ({"ANONYMIZE_THREADS": "many"}, {"ANONYMIZE_THREADS": "0"}):
        with pytest.raises(UsageError):
            plan_threads(env=bad, cores=2.0)
    with pytest.raises(UsageError):
        plan_threads(0, env={}, cores=2.0)
    assert plan_threads(env={"OMP_NUM_THREADS": "junk"}, cores=2.0).torch_source == "policy"


def test_plan_is_recorded_in_protect_and_detect_summaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(small_real(48)).save(d / "a.png")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("ANONYMIZE_THREADS", raising=False)
    before = torch.get_num_threads()
    r = CliRunner().invoke(app, ["protect", str(d), "-m", "blur", "--region", "image", "-o", str(tmp_path / "o"), "--json",
                                 "--threads", "3"])
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)["summary"]["threads"]
    assert (t["budget"], t["torch_threads"], t["workers"], t["source"]) == (3, 2, 2, "--threads")
    assert {"affinity", "cgroup_quota", "available"} <= set(t["cores"])
    assert torch.get_num_threads() == before  # a library call gives the caller its thread count back
    monkeypatch.setenv("ANONYMIZE_THREADS", "1")
    r = CliRunner().invoke(app, ["detect", str(d), "--detector", "haar", "--json", "--workers", "2"])
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)["summary"]["threads"]
    assert (t["budget"], t["torch_threads"], t["workers"], t["source"], t["workers_source"]) == (1, 1, 2, "ANONYMIZE_THREADS", "--workers")
    r = CliRunner().invoke(app, ["evaluate", str(d), str(tmp_path / "o"), "--no-faces", "--json", "--threads", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["summary"]["threads"]["source"] == "--threads"
    r = CliRunner().invoke(app, ["protect", str(d), "-m", "blur", "--threads", "0", "-o", str(tmp_path / "o2")])
    assert r.exit_code == 2
