"""The few Kubernetes core types the engine reads: metadata, label selectors, pods, namespaces.

They model only the fields cloudtaser looks at and ignore the rest, so a pod as the API server
returns it (status, managedFields, ...) parses unchanged. Label-selector semantics follow
apimachinery's ``LabelSelectorAsSelector``: an empty selector matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# camelCase on the wire (snake_case names taken too), unknown fields refused: the models'
# config, and the Plan's slotted records' (engine/cloudtaser/engine/plans.py).
WIRE = ConfigDict(
    extra="forbid",
    alias_generator=to_camel,
    populate_by_name=True,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
)


class Model(BaseModel):
    """Base of the cloudtaser resource models: camelCase on the wire, unknown fields refused."""

    model_config = WIRE


class KubeModel(Model):
    """Base of Kubernetes core types: fields cloudtaser does not read are ignored, not refused."""

    model_config = ConfigDict(extra="ignore")


def regex_check(
    code: str, regex: re.Pattern[str], message: str, max_len: int | None = None
) -> Callable[[str], str]:
    """A field validator: ``message`` (with ``{value}``) unless the value matches ``regex``."""

    def check(value: str) -> str:
        if (max_len is not None and len(value) > max_len) or not regex.match(value):
            raise PydanticCustomError(code, message, {"value": value})
        return value

    return check


_check_dns_subdomain = regex_check(
    "dns_subdomain",
    DNS_SUBDOMAIN,
    "'{value}' is not a valid name: lower-case letters, digits, '-' and '.', "
    "starting and ending with a letter or digit, at most 253 characters",
    253,
)
_check_dns_label = regex_check(
    "dns_label",
    DNS_LABEL,
    "'{value}' is not a valid name: lower-case letters, digits and '-', "
    "starting and ending with a letter or digit, at most 63 characters",
    63,
)
_check_label_value = regex_check(
    "label_value", _LABEL_VALUE, "'{value}' is not a valid label value", 63
)


def _check_label_key(value: str) -> str:
    prefix, _, name = value.rpartition("/")
    if (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))) or (
        not name or len(name) > 63 or not _LABEL_NAME.match(name)
    ):
        raise PydanticCustomError(
            "label_key", "'{value}' is not a valid label key", {"value": value}
        )
    return value


DnsSubdomain = Annotated[str, AfterValidator(_check_dns_subdomain)]
DnsLabel = Annotated[str, AfterValidator(_check_dns_label)]
LabelKey = Annotated[str, AfterValidator(_check_label_key)]
LabelValue = Annotated[str, AfterValidator(_check_label_value)]


# Where a namespaced object without metadata.namespace lives (the API server's default).
DEFAULT_NAMESPACE = "default"


def namespace_of(obj: Mapping[str, Any]) -> str:
    """The namespace of a raw namespaced object (a dict as the API returns it)."""
    meta = obj.get("metadata")
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    return namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE


class ObjectMeta(KubeModel):
    """The metadata fields cloudtaser reads."""

    name: DnsSubdomain = Field(description="Name of the object, unique in its namespace.")
    namespace: DnsLabel | None = Field(
        default=None, description="Namespace of the object; unset for cluster-scoped objects."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of the object.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of the object."
    )
    uid: str | None = Field(default=None, description="Unique id given by the API server.")
    generation: int | None = Field(
        default=None, description="Spec generation, set by the API server."
    )

    @property
    def namespace_or_default(self) -> str:
        """The namespace a namespaced object lives in (DEFAULT_NAMESPACE when unset)."""
        return self.namespace or DEFAULT_NAMESPACE


class LabelSelectorRequirement(Model):
    """One expression of a label selector."""

    key: LabelKey = Field(description="The label key the expression applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] = Field(
        default_factory=list,
        description="Values for In and NotIn (non-empty); must be empty for Exists and "
        "DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise PydanticCustomError(
                "selector_values",
                "operator {op} needs at least one value",
                {"op": self.operator},
            )
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise PydanticCustomError(
                "selector_values",
                "operator {op} takes no values",
                {"op": self.operator},
            )
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values


class LabelSelector(Model):
    """A Kubernetes label selector; all terms must hold (AND). Empty matches everything."""

    match_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="Labels that must be present with exactly these values."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Expressions that must all hold."
    )

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.match_expressions)

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


class PodMeta(ObjectMeta):
    """Pod metadata: at admission a pod may have only ``generateName``."""

    name: str = Field(default="", description="Pod name; empty at admission with generateName.")
    generate_name: str | None = Field(default=None, description="Prefix for a generated name.")

    @property
    def display_name(self) -> str:
        return self.name or f"{self.generate_name or ''}<generated>"


class Container(KubeModel):
    """The container fields cloudtaser reads or patches."""

    name: str = Field(description="Container name.")
    image: str | None = Field(default=None, description="Container image reference.")
    command: list[str] | None = Field(default=None, description="Entrypoint override.")
    args: list[str] | None = Field(default=None, description="Arguments to the entrypoint.")
    env: list[dict[str, object]] | None = Field(default=None, description="Environment.")
    volume_mounts: list[dict[str, object]] | None = Field(
        default=None, description="Volume mounts."
    )
    security_context: dict[str, object] | None = Field(
        default=None, description="Container security context."
    )


class PodSpec(KubeModel):
    """The pod spec fields cloudtaser reads or patches."""

    containers: list[Container] = Field(description="The app containers.")
    init_containers: list[Container] | None = Field(default=None, description="Init containers.")
    volumes: list[dict[str, object]] | None = Field(default=None, description="Volumes.")
    node_name: str | None = Field(default=None, description="Node the pod is bound to.")
    node_selector: dict[str, str] | None = Field(default=None, description="Node selector.")
    runtime_class_name: str | None = Field(default=None, description="RuntimeClass.")
    security_context: dict[str, object] | None = Field(
        default=None, description="Pod security context."
    )
    service_account_name: str | None = Field(default=None, description="Service account.")


class TerminatedState(KubeModel):
    exit_code: int = Field(default=0, description="Exit status of the container's process.")
    reason: str | None = Field(default=None, description="Why it terminated.")
    message: str | None = Field(default=None, description="The termination message.")


class WaitingState(KubeModel):
    reason: str | None = Field(default=None, description="Why it waits (CrashLoopBackOff...).")


class ContainerState(KubeModel):
    """One of running, waiting, terminated (the kubelet sets exactly one)."""

    running: dict[str, object] | None = Field(default=None, description="Running since.")
    waiting: WaitingState | None = Field(default=None, description="Not running yet or again.")
    terminated: TerminatedState | None = Field(default=None, description="Exited.")


class ContainerStatus(KubeModel):
    name: str = Field(description="Container name.")
    state: ContainerState = Field(default_factory=ContainerState, description="Now.")
    last_state: ContainerState = Field(
        default_factory=ContainerState, description="Its previous run, after a restart."
    )


class PodStatus(KubeModel):
    """The pod status fields cloudtaser reads: how each container's last run ended."""

    container_statuses: list[ContainerStatus] | None = Field(
        default=None, description="App containers, as the kubelet reports them."
    )


class Pod(KubeModel):
    """A pod as the API server (or an AdmissionReview) presents it."""

    api_version: Literal["v1"] = "v1"
    kind: Literal["Pod"] = "Pod"
    metadata: PodMeta
    spec: PodSpec
    status: PodStatus | None = None


class Namespace(KubeModel):
    """A namespace; only its name and labels matter (namespace selectors)."""

    api_version: Literal["v1"] = "v1"
    kind: Literal["Namespace"] = "Namespace"
    metadata: ObjectMeta
