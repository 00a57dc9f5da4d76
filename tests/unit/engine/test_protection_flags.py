"""ProtectionFlag is the one table of protections: the policy's fields, what a policy compiles to,
and what the agent parses all follow it (tests/unit/bpf/test_layouts.py ties it to the C)."""

from __future__ import annotations

import pytest

from cloudtaser.engine.plans import ProtectionFlag
from cloudtaser.engine.policies import effective_policy
from cloudtaser.engine.resources import EnforcementPolicy, Protections
from cloudtaser.errors import PermanentError
from tests.harness.documents import policy_doc

MODES = ProtectionFlag.AUDIT_ONLY | ProtectionFlag.KILL


def test_all_is_every_bit_but_the_modes() -> None:
    assert int(ProtectionFlag.ALL) == ProtectionFlag.known() & ~MODES
    assert ProtectionFlag.ALL not in list(ProtectionFlag)  # an alias: the C has no PF_ALL
    assert list(ProtectionFlag.protections().values()) == [
        f for f in ProtectionFlag if not f & MODES
    ]


def test_the_policy_fields_are_the_protections() -> None:
    assert list(Protections.model_fields) == list(ProtectionFlag.protections())


@pytest.mark.parametrize("name", list(ProtectionFlag.protections()))
def test_compile_writes_each_protection_by_its_name(name: str) -> None:
    """A policy turning off one protection compiles to every other bit, and names them."""
    alias = Protections.model_fields[name].alias or name
    policy = effective_policy(
        [EnforcementPolicy.model_validate(policy_doc("one-off", protections={alias: False}))]
    )
    flag = ProtectionFlag.protections()[name]
    assert policy.flags == ProtectionFlag.ALL & ~flag
    assert sorted(policy.protections) == sorted(ProtectionFlag(policy.flags).names())


def test_the_default_policy_compiles_to_all() -> None:
    assert effective_policy([]).flags == ProtectionFlag.ALL
    assert effective_policy([]).protections == sorted(ProtectionFlag.ALL.names())


def test_names_in_bit_order() -> None:
    flags = ProtectionFlag.CORE_DUMP | ProtectionFlag.ENVIRON | ProtectionFlag.AUDIT_ONLY
    assert flags.names() == ["environ", "core_dump"]
    assert ProtectionFlag.ALL.names() == list(ProtectionFlag.protections())
    assert ProtectionFlag(1 << 16 | 1).names() == ["environ"]  # state bits are no protection


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "environ, MEM,ptrace",
            ProtectionFlag.ENVIRON | ProtectionFlag.MEM | ProtectionFlag.PTRACE,
        ),
        ("all", ProtectionFlag.ALL),
        ("all,audit_only", ProtectionFlag.ALL | ProtectionFlag.AUDIT_ONLY),
        ("0x103", 0x103),
        ("3", 3),
        ("", 0),
    ],
)
def test_parse(text: str, expected: int) -> None:
    assert ProtectionFlag.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("environ,bogus", "unknown protection 'bogus'"),
        ("0x400", "unknown protection flag bits: 0x400"),
        ("0x10000", "unknown protection flag bits: 0x10000"),  # a state bit is no policy
        ("-1", "unknown protection flag bits"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        ProtectionFlag.parse(text)
