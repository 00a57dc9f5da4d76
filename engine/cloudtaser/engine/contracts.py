"""The wrapper contract's generated part: ``config.schema`` of contracts/wrapper-contract.json.

The schema comes from ``WrapperConfig`` (the wire names, as the Go wrapper reads them); the
rest of the file (the test vectors) is written by hand. ``with_config_schema`` returns the
contract with its schema replaced, so `cloudtaser contract --write` and the drift test agree.
"""

from __future__ import annotations

from typing import Any

from cloudtaser.engine.plans import WrapperConfig

CONTRACT_FILE = "contracts/wrapper-contract.json"


def config_schema() -> dict[str, Any]:
    schema: dict[str, Any] = WrapperConfig.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def with_config_schema(contract: dict[str, Any]) -> dict[str, Any]:
    """``contract`` with ``config.schema`` regenerated (other members kept, in order)."""
    config = dict(contract.get("config") or {})
    config["schema"] = config_schema()
    config.setdefault("vectors", [])
    ordered = {"schema": config["schema"], **{k: v for k, v in config.items() if k != "schema"}}
    return {**contract, "config": ordered}
