"""How much host memory this process can still take: the kernel's MemAvailable and the room its cgroups leave.

The roots (/proc, /sys/fs/cgroup) are parameters so that tests can fake them.
"""

from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class Room:
    """Bytes this process can still allocate, and where the figure comes from (for messages)."""

    bytes: int
    source: str


def mem_available(proc: Path = PROC) -> int | None:
    """/proc/meminfo's MemAvailable in bytes (free memory plus the page cache the kernel can reclaim)."""
    try:
        lines = (proc / "meminfo").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) * 1024
    return None


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2's "max" is no limit


def _reclaimable(stat_file: Path, key: str) -> int:
    """The inactive page cache a cgroup's memory.stat counts: in its usage, but reclaimed before an OOM kill."""
    try:
        lines = stat_file.read_text(encoding="ascii").splitlines()
    except OSError:
        return 0
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _own_cgroups(proc: Path) -> dict[str, str]:
    """This process's cgroup path per hierarchy, from /proc/self/cgroup: "" for v2, "memory" for v1's memory one."""
    try:
        lines = (proc / "self" / "cgroup").read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    paths = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _chain(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and each parent up to the mount; the mount alone when the path is not visible there."""
    folder = mount / path.strip("/")
    if not folder.is_dir():
        return [mount]
    chain = [folder]
    while chain[-1] != mount:
        chain.append(chain[-1].parent)
    return chain


def cgroup_room(proc: Path = PROC, cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """The least room (limit less non-reclaimable usage) over this process's memory cgroup and its parents, v2 or v1;
    None when no cgroup sets a limit."""
    own = _own_cgroups(proc)
    layouts = []
    if "" in own and (cgroup_root / "cgroup.controllers").is_file():
        layouts.append((cgroup_root, own[""], "memory.max", "memory.current", "inactive_file"))
    if "memory" in own:
        layouts.append((cgroup_root / "memory", own["memory"], "memory.limit_in_bytes", "memory.usage_in_bytes",
                        "total_inactive_file"))
    rooms = []
    for mount, path, limit_name, usage_name, reclaimable_key in layouts:
        for folder in _chain(mount, path):
            limit, usage = _read_number(folder / limit_name), _read_number(folder / usage_name)
            if limit is None or limit >= UNLIMITED or usage is None:
                continue
            rooms.append(limit - max(0, usage - _reclaimable(folder / "memory.stat", reclaimable_key)))
    return max(0, min(rooms)) if rooms else None


def available_memory(proc: Path = PROC, cgroup_root: Path = CGROUP_ROOT) -> Room | None:
    """The memory this process can still take: the smaller of MemAvailable and its cgroups' room; None if unknown."""
    found = [
        Room(size, source)
        for size, source in ((mem_available(proc), "MemAvailable"), (cgroup_room(proc, cgroup_root), "cgroup limit"))
        if size is not None
    ]
    return min(found, key=lambda room: room.bytes) if found else None
