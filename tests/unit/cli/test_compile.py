"""`cloudtaser compile`: table/json/yaml output and --pod patches."""

from __future__ import annotations

import json
from pathlib import Path

import jsonpatch
import yaml
from click.testing import CliRunner

from cloudtaser.cli import main
from tests.harness.documents import binding_doc, pod_doc, policy_doc


def setup(tmp_path: Path) -> tuple[str, str]:
    objects = tmp_path / "objects.yaml"
    objects.write_text(yaml.safe_dump_all([binding_doc("app")]))
    pod = tmp_path / "pod.yaml"
    pod.write_text(yaml.safe_dump(pod_doc(labels={"app": "app"})))
    return str(objects), str(pod)


def test_table_output_for_people(tmp_path: Path) -> None:
    objects, pod = setup(tmp_path)
    result = CliRunner().invoke(main, ["compile", objects, pod])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["BINDING", "VALID", "PODS", "INJECTED", "SECRETS"]
    assert lines[1].split() == ["team/app", "True", "1", "0", "1"]
    assert "webhook namespaces: team" in result.stdout


def test_table_shows_the_nodes_a_policy_pins_pods_to(tmp_path: Path) -> None:
    objects = tmp_path / "objects.yaml"
    objects.write_text(
        yaml.safe_dump_all(
            [
                binding_doc("app"),
                pod_doc(labels={"app": "app"}),
                policy_doc("lsm-only", requireBackend="lsm"),
                policy_doc("other"),
            ]
        )
    )
    result = CliRunner().invoke(main, ["compile", str(objects)])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    pod_header = next(i for i, r in enumerate(rows) if r[:1] == ["POD"])
    assert rows[pod_header][-1] == "NODES" and rows[pod_header + 1][-1] == "backend=lsm"
    policy_header = rows.index(["POLICY", "PODS", "PINNED"])
    assert rows[policy_header + 1 : policy_header + 3] == [
        ["lsm-only", "1", "1"],
        ["other", "1", "0"],
    ]


def test_yaml_and_json_agree(tmp_path: Path) -> None:
    objects, _ = setup(tmp_path)
    as_json = json.loads(CliRunner().invoke(main, ["compile", objects, "-o", "json"]).stdout)
    as_yaml = yaml.safe_load(CliRunner().invoke(main, ["compile", objects, "-o", "yaml"]).stdout)
    assert as_json == as_yaml and as_json["rules"][0]["binding"] == "team/app"


def test_pod_patch_applies(tmp_path: Path) -> None:
    objects, pod = setup(tmp_path)
    result = CliRunner().invoke(main, ["compile", objects, "--pod", pod])
    assert result.exit_code == 0, result.output
    patched = jsonpatch.apply_patch(
        yaml.safe_load(Path(pod).read_text()), json.loads(result.stdout)
    )
    assert patched["spec"]["containers"][0]["command"][:2] == ["/cloudtaser/wrapper", "--"]


def test_unselected_pod_gets_an_empty_patch_and_a_reason(tmp_path: Path) -> None:
    objects, _ = setup(tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(pod_doc(labels={"app": "nope"})))
    result = CliRunner().invoke(main, ["compile", objects, "--pod", str(other)])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    assert "not selected by any binding" in result.stderr


def test_errors_in_input_exit_one_with_located_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    doc = binding_doc()
    doc["spec"]["vault"]["address"] = "http://x"
    bad.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["compile", str(bad)])
    assert result.exit_code == 1
    assert "error: SecretBinding team/app: spec.vault.address:" in result.stderr
