"""`cloudtaser validate`: one located line per problem, exit codes, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from cloudtaser.cli import main
from tests.harness.documents import binding_doc, policy_doc


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def write(path: Path, *docs: object) -> str:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def test_valid_files_exit_zero(tmp_path: Path) -> None:
    f = write(tmp_path / "ok.yaml", binding_doc(), policy_doc())
    assert run("validate", f) == (0, "", "ok: 2 document(s) valid\n")


def test_the_issue_example_line_exactly(tmp_path: Path) -> None:
    doc = binding_doc()
    doc["spec"]["secrets"][0]["keys"].append({"key": "b", "env": "lower-case"})
    f = write(tmp_path / "bad.yaml", doc)
    code, out, _ = run("validate", f)
    assert code == 1
    assert out == (
        f"{f}:0: spec.secrets[0].keys[1].env: 'lower-case' is not a valid environment variable name\n"
    )


def test_every_problem_of_every_document_is_listed_in_order(tmp_path: Path) -> None:
    bad = binding_doc(vault={"address": "http://x", "role": "r"})
    f = write(tmp_path / "multi.yaml", policy_doc(), bad, {"apiVersion": "v9", "kind": "Gizmo"})
    code, out, _ = run("validate", f)
    assert code == 1
    assert out.splitlines() == [
        f"{f}:1: spec.vault.address: 'http://x' must be an https:// URL: the wrapper talks "
        "to OpenBao only over TLS",
        f"{f}:2: kind: unknown kind 'Gizmo' (expected one of: EnforcementPolicy, Namespace, "
        "Pod, SecretBinding)",
    ]


def test_yaml_syntax_error_names_line_and_document(tmp_path: Path) -> None:
    f = tmp_path / "syntax.yaml"
    f.write_text(yaml.safe_dump(policy_doc()) + "---\nkind: [unclosed\n")
    code, out, _ = run("validate", str(f))
    assert code == 1
    assert out.startswith(f"{f}:1: (document): YAML syntax error at line ")


def test_duplicate_keys_and_duplicate_objects_are_problems(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("apiVersion: cloudtaser.io/v1alpha1\nkind: EnforcementPolicy\nkind: X\n")
    g = write(tmp_path / "a.yaml", policy_doc("same"))
    h = write(tmp_path / "b.yaml", policy_doc("same"))
    code, out, _ = run("validate", str(f), g, h)
    assert code == 1
    lines = out.splitlines()
    assert any("found duplicate key 'kind'" in line for line in lines)
    assert f"{h}:0: metadata.name: EnforcementPolicy same is also defined at {g}:0" in lines


def test_missing_file_and_directory_expansion(tmp_path: Path) -> None:
    write(tmp_path / "x.yaml", policy_doc())
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "y.yml", binding_doc())
    code, out, err = run("validate", str(tmp_path), str(tmp_path / "nope.yaml"))
    assert code == 1
    assert out == f"{tmp_path / 'nope.yaml'}:-: file: cannot read: No such file or directory\n"


def test_real_console_script_never_prints_a_traceback(tmp_path: Path) -> None:
    f = tmp_path / "garbage.yaml"
    f.write_bytes(b"\xff\xfe not utf8")
    exe = Path(sys.executable).parent / "cloudtaser"
    proc = subprocess.run(
        [str(exe), "validate", str(f), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"{f}:-: file: not UTF-8 text" in proc.stdout


def test_env_delivery_with_refresh_is_valid_but_warned(tmp_path: Path) -> None:
    f = write(tmp_path / "refresh.yaml", binding_doc(refreshInterval="5m"))
    code, out, _ = run("validate", f)
    assert code == 0
    assert out == (
        f"{f}:0: spec.secrets[0].keys[0].env: warning: environment variable "
        "PASSWORD is not refreshed: a process's environment cannot change after it "
        "starts (use file or sdk delivery for values that rotate)\n"
    )
