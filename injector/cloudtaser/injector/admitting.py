"""AdmissionReview in, AdmissionReview out: the webhook's decision for one pod.

Transport-free (the server in serving.py only moves bytes), so it is tested directly and
benchmarked in-process. Outcomes:
- not a pod CREATE, or no binding selects the pod: allowed, unchanged;
- selected: allowed with the engine's JSON patch (idempotent: an injected pod gets none);
- selected but not injectable (e.g. no command and no resolvable entrypoint): denied with the
  reason, so the pod is never started without its secrets;
- malformed review: HTTP 400 with a message — never a 500 or a traceback.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from cloudtaser.engine.compiler import IncrementalCompiler
from cloudtaser.engine.fields import validation_problems
from cloudtaser.engine.kube import Pod
from cloudtaser.engine.patches import ImageEntrypoint, pod_patch
from cloudtaser.engine.plans import InjectorSettings
from cloudtaser.injector.resolving import ResolveError

MAX_BODY = 3 * 1024 * 1024  # the API server's own request limit for objects
# INFO: one line per decision that changed something (a pod injected or refused); DEBUG: the
# rest. Names, counts and reasons only: a pod's env values never reach a log line.
log = logging.getLogger("cloudtaser.injector")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def _bad_request(message: str) -> Answer:
    return Answer(400, {"error": message[:500]})


def _response(uid: str, allowed: bool, **extra: Any) -> Answer:
    return Answer(
        200,
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": allowed, **extra},
        },
    )


def _entrypoints(
    pod: Pod, containers: set[str], resolve: Callable[[str], ImageEntrypoint]
) -> tuple[dict[str, ImageEntrypoint], list[str]]:
    """Image ENTRYPOINT/CMD for the injected containers that set no command."""
    found: dict[str, ImageEntrypoint] = {}
    errors = []
    for index, container in enumerate(pod.spec.containers):
        if container.name not in containers or container.command or not container.image:
            continue
        try:
            found[container.name] = resolve(container.image)
        except ResolveError as e:
            errors.append(
                f"spec.containers[{index}]: {e}; set command so the wrapper knows what to start"
            )
    return found, errors


def admit(
    body: bytes,
    compiler: IncrementalCompiler,
    settings: InjectorSettings,
    entrypoints: dict[str, ImageEntrypoint] | None = None,
    resolve: Callable[[str], ImageEntrypoint] | None = None,
) -> Answer:
    """``resolve`` (blocking: registry I/O) fills ``entrypoints`` for containers without a
    command; without it such a container is refused."""
    if len(body) > MAX_BODY:
        return _bad_request("AdmissionReview too large")
    try:
        review = orjson.loads(body)  # a fifth of json.loads's time for a pod's review
    except (ValueError, UnicodeDecodeError) as e:
        return _bad_request(f"body is not JSON: {e}")
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        return _bad_request("body is not an AdmissionReview")
    if review.get("apiVersion") != "admission.k8s.io/v1":
        return _bad_request("only admission.k8s.io/v1 AdmissionReviews are supported")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        return _bad_request("AdmissionReview has no request.uid")
    uid = request["uid"]
    kind = request.get("kind") or {}
    if (
        request.get("operation") != "CREATE"
        or not isinstance(kind, dict)
        or kind.get("kind") != "Pod"
    ):
        return _response(uid, True)
    raw = request.get("object")
    if not isinstance(raw, dict):
        return _bad_request("AdmissionReview has no request.object")
    meta = raw.setdefault("metadata", {})
    namespace = request.get("namespace")
    if isinstance(meta, dict) and isinstance(namespace, str) and not meta.get("namespace"):
        meta["namespace"] = namespace  # absent from the object at CREATE
    elif isinstance(meta, dict) and namespace and meta.get("namespace") != namespace:
        # The API server never sends this; a review forged by whoever reaches the port
        # could otherwise be planned in one namespace and read pull secrets in another.
        return _bad_request("request.namespace and request.object.metadata.namespace differ")
    try:
        pod = Pod.model_validate(raw)
    except ValidationError as e:
        path, message = validation_problems(e)[0]
        return _response(uid, False, status={"code": 400, "message": f"{path}: {message}"})
    where = f"pod {pod.metadata.namespace}/{pod.metadata.display_name}"
    plan = compiler.plan_pod(pod)
    if plan is None:
        log.debug("%s: no binding selects it; admitted unchanged", where)
        return _response(uid, True)
    if resolve is not None:
        resolved, errors = _entrypoints(pod, {c.name for c in plan.containers}, resolve)
        if errors:
            log.info("%s: refused: %s", where, "; ".join(errors))
            return _response(
                uid,
                False,
                status={
                    "code": 403,
                    "reason": "Forbidden",
                    "message": "cloudtaser: " + "; ".join(errors),
                },
            )
        entrypoints = {**resolved, **(entrypoints or {})}
    result = pod_patch(pod, plan, settings, entrypoints)
    if result.problems:
        message = "; ".join(f"{p.path}: {p.message}" for p in result.problems)
        log.info("%s: refused: %s", where, message)
        return _response(
            uid,
            False,
            status={"code": 403, "reason": "Forbidden", "message": f"cloudtaser: {message}"},
        )
    if not result.operations:
        log.debug("%s: already injected; admitted unchanged", where)
        return _response(uid, True)
    bindings = sorted({b for c in plan.containers for b in c.bindings})
    log.info(
        "%s: injected into %s (bindings %s; %d patch operation(s))",
        where,
        ", ".join(c.name for c in plan.containers),
        ", ".join(bindings),
        len(result.operations),
    )
    # orjson: a tenth of json.dumps's time for the operations (benchmarks/sidebyside.py).
    patch = base64.b64encode(orjson.dumps(result.operations)).decode()
    return _response(uid, True, patchType="JSONPatch", patch=patch)
