"""The memory this process can still take (tuning/runtime/memory.py), on faked /proc and cgroup trees."""

from pathlib import Path

from tuning.runtime.memory import Room, available_memory, cgroup_room, mem_available

GB = 10**9


def fake_proc(root: Path, mem_available_kb: int | None, cgroup_lines: list[str]) -> Path:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    meminfo = ["MemTotal:       131072000 kB", "MemFree:         1000000 kB"]
    if mem_available_kb is not None:
        meminfo.append(f"MemAvailable:   {mem_available_kb} kB")
    (proc / "meminfo").write_text("\n".join(meminfo) + "\n", encoding="ascii")
    (proc / "self" / "cgroup").write_text("\n".join(cgroup_lines) + "\n", encoding="ascii")
    return proc


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text + "\n", encoding="ascii")


def test_mem_available_not_the_total(tmp_path):
    proc = fake_proc(tmp_path, 24_000_000, ["0::/"])
    assert mem_available(proc) == 24_000_000 * 1024
    assert available_memory(proc, tmp_path / "no-cgroups") == Room(24_000_000 * 1024, "MemAvailable")


def test_cgroup_v2_limit_less_usage_wins_when_smaller(tmp_path):
    proc = fake_proc(tmp_path, 100_000_000, ["0::/job/step"])
    cgroups = tmp_path / "cgroup"
    write(cgroups, **{"cgroup_controllers": "cpu memory"})
    write(cgroups / "job", memory_max=str(24 * GB), memory_current=str(10 * GB),
          memory_stat=f"anon {8 * GB}\ninactive_file {2 * GB}")
    write(cgroups / "job" / "step", memory_max="max", memory_current=str(9 * GB))
    # the job's limit less what it holds that cannot be reclaimed: 24 - (10 - 2) GB
    assert cgroup_room(proc, cgroups) == 16 * GB
    assert available_memory(proc, cgroups) == Room(16 * GB, "cgroup limit")


def test_cgroup_v1_memory_hierarchy(tmp_path):
    proc = fake_proc(tmp_path, 100_000_000, ["4:memory:/process_api/abc", "0::/"])
    memory = tmp_path / "cgroup" / "memory"
    write(memory, memory_limit_in_bytes="9223372036854771712", memory_usage_in_bytes=str(50 * GB))
    write(memory / "process_api" / "abc", memory_limit_in_bytes=str(30 * GB), memory_usage_in_bytes=str(6 * GB),
          memory_stat=f"total_inactive_file {GB}")
    assert cgroup_room(proc, tmp_path / "cgroup") == 25 * GB  # the root's "no limit" is not one


def test_a_cgroup_path_not_visible_falls_back_to_the_mount(tmp_path):
    proc = fake_proc(tmp_path, 100_000_000, ["0::/elsewhere/on/the/host"])
    cgroups = tmp_path / "cgroup"
    write(cgroups, cgroup_controllers="memory", memory_max=str(8 * GB), memory_current=str(GB))
    assert cgroup_room(proc, cgroups) == 7 * GB


def test_nothing_known_is_none(tmp_path):
    proc = fake_proc(tmp_path, None, ["0::/"])
    assert mem_available(proc) is None and cgroup_room(proc, tmp_path / "none") is None
    assert available_memory(proc, tmp_path / "none") is None
