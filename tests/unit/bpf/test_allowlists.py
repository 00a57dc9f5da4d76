"""Allow-list ids and their map entries (bpf/cloudtaser/bpf/allowlists.py), on a stand-in map."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from cloudtaser.bpf import allowlists, layouts
from cloudtaser.bpf.programs import Map


class FakeMap:
    """The part of programs.Map the allow-lists use, over AccessorKey bytes."""

    def __init__(self) -> None:
        self.entries: dict[bytes, int] = {}

    def update(self, key: layouts.AccessorKey, value: ctypes.c_uint32) -> None:
        self.entries[bytes(key)] = value.value

    def delete(self, key: layouts.AccessorKey) -> bool:
        return self.entries.pop(bytes(key), None) is not None

    def lookup(self, key: layouts.AccessorKey, value: ctypes.c_uint32) -> bool:
        if bytes(key) not in self.entries:
            return False
        value.value = self.entries[bytes(key)]
        return True

    def keys(self, key_type: type[Any]) -> Iterator[Any]:
        for raw in list(self.entries):
            yield key_type.from_buffer_copy(raw)

    def lists(self) -> set[int]:
        return {k.list for k in self.keys(layouts.AccessorKey)}


def lists(in_use: set[int]) -> tuple[allowlists.AllowLists, FakeMap]:
    fake = FakeMap()
    return allowlists.AllowLists(lambda: cast(Map, fake), lambda: in_use), fake


PYTHON = os.path.realpath(sys.executable)


def test_one_id_per_distinct_list_and_none_for_empty() -> None:
    al, fake = lists(set())
    first = al.list_for([PYTHON, "/bin/sh:1000"])
    assert first == allowlists.DEFAULT_LIST + 1
    assert al.list_for(["/bin/sh:1000", PYTHON]) == first  # same set, same id
    assert al.list_for([PYTHON]) == first + 1
    assert al.list_for([]) == allowlists.NO_ACCESSORS
    assert fake.lists() == {first, first + 1}


def test_a_missing_path_is_skipped(tmp_path: Path) -> None:
    al, fake = lists(set())
    list_id = al.list_for([str(tmp_path / "gone"), PYTHON])
    assert len(fake.entries) == 1 and fake.lists() == {list_id}


def test_allows_by_inode_and_uid() -> None:
    al, _ = lists(set())
    list_id = al.list_for([f"{PYTHON}:{os.getuid()}"])
    assert al.allows(os.getpid(), os.getuid(), list_id)
    assert not al.allows(os.getpid(), os.getuid() + 1, list_id)
    assert not al.allows(os.getpid(), os.getuid(), allowlists.NO_ACCESSORS)
    al.allow(PYTHON, None, 7)
    assert al.allows(os.getpid(), 12345, 7)  # any uid
    assert al.disallow(PYTHON, None, 7) and not al.allows(os.getpid(), 12345, 7)


def test_collect_keeps_what_is_in_use_default_and_reserved() -> None:
    in_use: set[int] = set()
    al, fake = lists(in_use)
    used = al.list_for([PYTHON])
    unused = al.list_for(["/bin/sh"])
    al.allow(PYTHON)  # the default list
    al.allow(PYTHON, None, allowlists.BPF_LOADERS_LIST)
    in_use.add(used)
    assert al.collect() == 1
    assert fake.lists() == {used, allowlists.DEFAULT_LIST, allowlists.BPF_LOADERS_LIST}
    assert al.list_for(["/bin/sh"]) == unused + 1  # forgotten: a new id, never reused


def test_adopt_numbers_above_the_pinned_ids() -> None:
    in_use = {5}
    al, fake = lists(in_use)
    fake.update(allowlists.accessor_key((1, 2, 3), 9), ctypes.c_uint32(1))  # nobody's now
    fake.update(
        allowlists.accessor_key((1, 2, 3), allowlists.CREDENTIAL_READERS_LIST), ctypes.c_uint32(1)
    )
    al.adopt()
    assert fake.lists() == {allowlists.CREDENTIAL_READERS_LIST}  # 9 collected
    assert al.list_for([PYTHON]) == 10  # above every id the maps held, reserved ones aside


def test_running_kubelets(tmp_path: Path) -> None:
    for pid, comm in (("10", "kubelet\n"), ("11", "bash\n"), ("self", "kubelet\n")):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "comm").write_text(comm)
    (tmp_path / "12").mkdir()  # exited meanwhile: no comm
    assert allowlists.running_kubelets(tmp_path) == [tmp_path / "10" / "exe"]
