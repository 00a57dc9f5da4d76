"""The operator drops a SecretBinding's parsed model once the compiler holds it, and reads it
back from its compact JSON when it needs it again: the same model, and OPA's input unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cloudtaser.engine.resources import SecretBinding
from cloudtaser.operator.reconciling import Parsed
from tests.harness.documents import binding_doc

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def bodies() -> list[dict[str, object]]:
    found = [binding_doc("app", "team-a")]
    for path in sorted(EXAMPLES.glob("*.yaml")):
        found += [
            d
            for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") == "SecretBinding"
        ]
    return found


def test_a_dropped_binding_model_reads_back_equal() -> None:
    assert len(bodies()) > 1
    for body in bodies():
        body = {**body, "status": {"observedGeneration": 3}}
        parsed = Parsed.of("SecretBinding", "uid/1", body)
        model = parsed.model
        assert isinstance(model, SecretBinding)
        parsed.lean()
        assert parsed.model is None
        again = parsed.current()
        assert again == model.model_copy(update={"status": None}), body["metadata"]
        assert parsed.dump is not None
        assert "status" not in json.loads(parsed.dump)
        # what OPA is asked about: the binding as the API shows it, without status
        assert json.loads(parsed.dump) == model.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude={"status"}
        )


def test_other_kinds_keep_their_models_and_invalid_bindings_their_problems() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "a"},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }
    parsed = Parsed.of("Pod", "1", pod)
    parsed.lean()
    assert parsed.model is not None and parsed.current() is parsed.model
    bad = binding_doc("app", "team-a")
    bad["spec"]["vault"]["address"] = 42
    broken = Parsed.of("SecretBinding", "uid/1", bad)
    assert broken.model is None and broken.dump is None and broken.problems
    assert broken.current() is None
