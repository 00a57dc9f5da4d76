"""The ``cloudtaser`` command: validate, compile (offline dry run), doctor, crds.

Every failure a user can cause ends as a located, one-line message and a non-zero exit, never
a traceback: ``FILE:DOC_INDEX: FIELD.PATH: message`` for documents.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import BaseModel

from cloudtaser import logs, probing, rendering
from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler, compile_binding
from cloudtaser.engine.contracts import CONTRACT_FILE, with_config_schema
from cloudtaser.engine.crds import custom_resource_definitions
from cloudtaser.engine.documents import (
    CORE_KINDS,
    RESOURCE_KINDS,
    as_problems,
    parse_document,
)
from cloudtaser.engine.kube import Namespace, Pod
from cloudtaser.engine.patches import pod_patch
from cloudtaser.engine.plans import EffectivePolicy, Plan, Problem
from cloudtaser.engine.resources import EnforcementPolicy, SecretBinding
from cloudtaser.version import __version__
from cloudtaser.yamlfiles import Document, LoadProblem, load_files

OUTPUT = click.option(
    "-o", "--output", type=click.Choice(rendering.FORMATS), default="table", show_default=True
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cloudtaser")
def main() -> None:
    """cloudtaser: Kubernetes secrets that live only in process memory."""


def _parse_all(
    docs: list[Document], kinds: dict[str, type[BaseModel]]
) -> tuple[list[tuple[Document, BaseModel]], list[tuple[Document, list[tuple[str, str]]]]]:
    parsed, failed = [], []
    for doc in docs:
        model, problems = parse_document(doc.body, kinds)
        if model is None:
            failed.append((doc, problems))
        else:
            parsed.append((doc, model))
    return parsed, failed


def _identity(model: BaseModel) -> tuple[str, str, str]:
    meta = getattr(model, "metadata")  # noqa: B009 (BaseModel: typed by what it holds)
    namespace = "" if isinstance(model, EnforcementPolicy) else meta.namespace_or_default
    return (getattr(model, "kind"), namespace, meta.name)  # noqa: B009


def _duplicates(parsed: list[tuple[Document, BaseModel]]) -> list[LoadProblem]:
    first: dict[tuple[str, str, str], Document] = {}
    problems = []
    for doc, model in parsed:
        ident = _identity(model)
        if ident in first:
            other = first[ident]
            problems.append(
                LoadProblem(
                    doc.file,
                    doc.index,
                    "metadata.name",
                    f"{ident[0]} {'/'.join(p for p in ident[1:] if p)} is also defined at "
                    f"{other.file}:{other.index}",
                )
            )
        else:
            first[ident] = doc
    return problems


@main.command()
@click.argument("files", nargs=-1, required=True)
def validate(files: tuple[str, ...]) -> None:
    """Check SecretBinding/EnforcementPolicy YAML (files or directories).

    Exit 0 when every document is valid; otherwise exit 1 and print one line per problem:
    FILE:DOC_INDEX: FIELD.PATH: message
    """
    docs, problems = load_files(list(files))
    # Pods and Namespaces often travel with bindings; they are checked for what cloudtaser reads.
    parsed, failed = _parse_all(docs, {**RESOURCE_KINDS, **CORE_KINDS})
    for doc, found in failed:
        problems.extend(LoadProblem(doc.file, doc.index, p, m) for p, m in found)
    problems.extend(_duplicates(parsed))
    problems.sort(key=lambda p: (p.file, -1 if p.index is None else p.index))
    for problem in problems:
        click.echo(problem.line())
    # Warnings (valid, but probably not what was meant) do not change the exit code.
    for doc, model in parsed:
        if isinstance(model, SecretBinding):
            for warning in compile_binding(model).problems:
                click.echo(f"{doc.file}:{doc.index}: {warning.path}: warning: {warning.message}")
    if problems:
        sys.exit(1)
    click.echo(f"ok: {len(parsed)} document(s) valid", err=True)


def _state(files: list[str]) -> tuple[ClusterState, list[LoadProblem]]:
    docs, load_problems = load_files(files)
    parsed, failed = _parse_all(docs, {**RESOURCE_KINDS, **CORE_KINDS})
    load_problems.extend(_duplicates(parsed))
    by_type: dict[type, list[Any]] = defaultdict(list)
    for _, model in parsed:
        by_type[type(model)].append(model)
    problems: list[Problem] = []
    for doc, found in failed:
        problems.extend(as_problems(doc.body, found))
    state = ClusterState(
        bindings=by_type[SecretBinding],
        policies=by_type[EnforcementPolicy],
        pods=by_type[Pod],
        namespaces=by_type[Namespace],
        problems=problems,
    )
    return state, load_problems


def _load_pod(path: str) -> Pod:
    docs, problems = load_files([path])
    for problem in problems:
        raise click.ClickException(problem.line())
    pods = [d for d in docs if isinstance(d.body, dict) and d.body.get("kind") == "Pod"]
    if len(pods) != 1:
        raise click.ClickException(f"{path}: expected exactly one Pod document, found {len(pods)}")
    model, found = parse_document(pods[0].body, CORE_KINDS)
    if model is None:
        raise click.ClickException("\n".join(f"{path}:{pods[0].index}: {p}: {m}" for p, m in found))
    assert isinstance(model, Pod)
    return model


def _plan_tables(plan: Plan) -> str:
    out = rendering.table(
        ["binding", "valid", "pods", "injected", "secrets"],
        [[b.binding, b.valid, b.matched_pods, b.injected_pods, b.secrets] for b in plan.bindings],
    )
    rows = []
    for pod in plan.pods:
        for c in pod.containers:
            keys = [k for s in c.config.sources for sec in s.secrets for k in sec.keys]
            rows.append(
                [
                    f"{pod.namespace}/{pod.name}",
                    c.name,
                    ",".join(c.bindings),
                    sum(1 for k in keys if k.env),
                    sum(1 for k in keys if k.file),
                    sum(1 for k in keys if k.sdk),
                    pod.policy.mode,
                    ",".join(pod.policy.policies) or "(default)",
                    _node_requirements(pod.policy),
                ]
            )
    if rows:
        out += "\n" + rendering.table(
            ["pod", "container", "bindings", "env", "files", "sdk", "mode", "policies", "nodes"],
            rows,
        )
    if plan.policies:
        out += "\n" + rendering.table(
            ["policy", "pods", "pinned"],
            [[p.policy, p.matched_pods, len(p.constrained_pods)] for p in plan.policies],
        )
    out += "\nwebhook namespaces: " + (", ".join(plan.webhook.namespaces) or "(none)") + "\n"
    return out


def _node_requirements(policy: EffectivePolicy) -> str:
    """The nodes a pod may run on, as its policies require them."""
    wanted = []
    if policy.require_confidential_node:
        wanted.append("confidential")
    if policy.require_backend is not None:
        wanted.append(f"backend={policy.require_backend}")
    return ",".join(wanted) or "any"


def _problem_lines(problems: list[Problem]) -> list[str]:
    lines = []
    for p in problems:
        obj = "/".join(x for x in (p.namespace, p.name) if x)
        lines.append(f"{p.severity}: {p.kind} {obj}: {p.path}: {p.message}")
    return lines


@main.command(name="compile")
@click.argument("files", nargs=-1, required=True)
@click.option("--pod", "pod_file", help="Print the JSON patch the webhook would apply to this pod.")
@OUTPUT
def compile_cmd(files: tuple[str, ...], pod_file: str | None, output: str) -> None:
    """Offline dry run: print the Plan for the objects in FILES (files or directories).

    Pods and Namespaces in FILES take part as cluster state. With --pod, print instead the
    exact RFC 6902 patch the admission webhook would apply to that pod (JSON by default).
    Problems go to stderr; exit 1 when any is an error.
    """
    state, load_problems = _state(list(files))
    for problem in load_problems:
        click.echo(problem.line(), err=True)
    compiler = IncrementalCompiler(state)
    plan = compiler.plan()
    errors = bool(load_problems) or any(p.severity == "error" for p in plan.problems)
    if pod_file is not None:
        pod = _load_pod(pod_file)
        pod_plan = compiler.plan_pod(pod)
        if pod_plan is None:
            click.echo(
                f"{pod_file}: pod is not selected by any binding (it needs the annotation "
                'cloudtaser.io/inject: "true" and labels a binding in its namespace selects)',
                err=True,
            )
            operations: list[dict[str, Any]] = []
            problems: list[Problem] = []
        else:
            result = pod_patch(pod, pod_plan, state.settings)
            operations, problems = result.operations, pod_plan.problems + result.problems
        for line in _problem_lines(problems):
            click.echo(line, err=True)
        fmt = "json" if output == "table" else output
        click.echo(rendering.dump(operations, fmt), nl=False)
        sys.exit(1 if any(p.severity == "error" for p in problems) else 0)
    for line in _problem_lines(plan.problems):
        click.echo(line, err=True)
    if output == "table":
        click.echo(_plan_tables(plan), nl=False)
    elif output == "json":
        click.echo(plan.to_json(), nl=False)
    else:
        click.echo(rendering.dump(json.loads(plan.to_json()), "yaml"), nl=False)
    sys.exit(1 if errors else 0)


@main.command()
@OUTPUT
def doctor(output: str) -> None:
    """Check this node: memfd_secret, BPF LSM, BTF, memlock, capabilities, swap, CC."""
    checks = probing.run_probes()
    if output == "table":
        click.echo(f"kernel {probing.kernel()}")
        click.echo(
            rendering.table(
                ["check", "status", "detail", "meaning"],
                [[c.name, c.status, c.detail, c.meaning] for c in checks],
                wrap={"detail": 60, "meaning": 50},
            ),
            nl=False,
        )
    else:
        summary = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
        data = {
            "kernel": probing.kernel(),
            "checks": [c.as_dict() for c in checks],
            "summary": summary,
        }
        click.echo(rendering.dump(data, output), nl=False)
    sys.exit(1 if any(c.status == "fail" for c in checks) else 0)


@main.command()
@click.option("--write", "directory", type=click.Path(file_okay=False), help="Write files here.")
def crds(directory: str | None) -> None:
    """Print (or write) the CustomResourceDefinitions generated from the models."""
    rendered = {name: render_crd(crd) for name, crd in custom_resource_definitions().items()}
    if directory is None:
        click.echo("---\n".join(rendered.values()), nl=False)
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        Path(directory, name).write_text(text)
        click.echo(f"wrote {Path(directory, name)}", err=True)


@main.command()
@click.option(
    "--file",
    "path",
    default=CONTRACT_FILE,
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The contract file.",
)
@click.option("--write", is_flag=True, help="Rewrite the file instead of printing it.")
def contract(path: Path, write: bool) -> None:
    """Print (or write) the wrapper contract with config.schema generated from the model."""
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{path}: {e}") from None
    text = render_contract(with_config_schema(current))
    if not write:
        click.echo(text, nl=False)
        return
    path.write_text(text)
    click.echo(f"wrote {path}", err=True)


def render_contract(contract: dict[str, Any]) -> str:
    return json.dumps(contract, indent=1) + "\n"


def render_crd(crd: dict[str, Any]) -> str:
    header = "# Generated by `cloudtaser crds --write crds/` from engine/cloudtaser/engine/resources.py; do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


# --- the admission webhook ---------------------------------------------------------------------


@main.group()
def injector() -> None:
    """The admission webhook that injects the wrapper into selected pods."""


def _compiler_from(files: tuple[str, ...]) -> IncrementalCompiler:
    state, load_problems = _state(list(files))
    for problem in load_problems:
        click.echo(problem.line(), err=True)
    compiler = IncrementalCompiler(state)
    for line in _problem_lines(compiler.plan().problems):
        click.echo(line, err=True)
    return compiler


@injector.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--tls-cert", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--tls-key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8443, show_default=True)
def serve(files: tuple[str, ...], tls_cert: str, tls_key: str, host: str, port: int) -> None:
    """Serve /mutate-v1-pod over HTTPS for the bindings and policies in FILES.

    (The operator serves the same handler from the cluster's live state.)
    """
    import asyncio

    from cloudtaser.injector import serving

    holder = serving.Holder(compiler=_compiler_from(files))

    async def run() -> None:
        runner = await serving.start(holder, host, port, tls_cert, tls_key)
        click.echo(f"serving https://{host}:{port}/mutate-v1-pod", err=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@injector.command(name="webhook-config")
@click.argument("files", nargs=-1, required=True)
@click.option("--url", required=True, help="https:// URL of /mutate-v1-pod.")
@click.option(
    "--ca-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM CA that signed the webhook's serving certificate.",
)
def webhook_config(files: tuple[str, ...], url: str, ca_file: str) -> None:
    """Print the MutatingWebhookConfiguration the Plan of FILES derives (YAML)."""
    import base64

    from cloudtaser.engine.webhooks import webhook_configuration

    plan = _compiler_from(files).plan()
    ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
    click.echo(
        rendering.dump(webhook_configuration(plan, {"url": url, "caBundle": ca}), "yaml"), nl=False
    )


# --- the operator ------------------------------------------------------------------------------


@main.command()
@click.option(
    "--tls-cert",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Serving certificate of the webhook.",
)
@click.option("--tls-key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--ca-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="CA that signed the serving certificate (the webhook's caBundle).",
)
@click.option(
    "--webhook-url",
    default=None,
    help="URL the API server calls (default https://HOST:PORT/mutate-v1-pod).",
)
@click.option(
    "--webhook-service",
    default=None,
    metavar="NAMESPACE/NAME[:PORT]",
    help="Reach the webhook through this Service instead of a URL (in-cluster).",
)
@click.option(
    "--settings",
    "settings_file",
    default=None,
    envvar="CLOUDTASER_SETTINGS",
    type=click.Path(exists=True, dir_okay=False),
    help="InjectorSettings JSON (the chart's injector.json; env CLOUDTASER_SETTINGS); "
    "default: built-in.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8443, show_default=True)
@click.option(
    "--opa-url", default=None, help="OPA to ask about each binding (e.g. http://127.0.0.1:18181)."
)
@click.option("--liveness", default=None, help="Health endpoint, e.g. http://0.0.0.0:8080/healthz.")
@click.option(
    "--leader-elect/--no-leader-elect",
    default=False,
    show_default=True,
    help="Run leader election on a Lease so several replicas can run: all serve the "
    "webhook, only the leader writes statuses and the webhook configuration.",
)
@click.option(
    "--leader-namespace",
    default=None,
    metavar="NAMESPACE",
    help="Namespace of the leader Lease (default: the settings' operatorNamespace).",
)
@click.option(
    "--identity",
    default=None,
    envvar="POD_NAME",
    help="This replica's name in the election (env POD_NAME; default: the hostname).",
)
@click.option(
    "--image-pull-secrets/--no-image-pull-secrets",
    default=True,
    show_default=True,
    help="Read a pod's imagePullSecrets (get by name) to resolve private images' "
    "ENTRYPOINT/CMD; off: such pods must set command.",
)
@click.option(
    "--registry-ca-file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle for registries (default: the system roots).",
)
@click.option(
    "--insecure-registry",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Registry reached over plain http (tests, local mirrors). Repeatable.",
)
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default="text",
    show_default=True,
    envvar="CLOUDTASER_LOG_FORMAT",
    help="One line per record: text, or a JSON object.",
)
@click.option(
    "--log-level",
    type=click.Choice(logs.LEVELS),
    default="info",
    show_default=True,
    envvar="CLOUDTASER_LOG_LEVEL",
    help="info: one line per admission that injected or refused a pod; debug: every one.",
)
def operator(
    tls_cert: str,
    tls_key: str,
    ca_file: str,
    webhook_url: str | None,
    webhook_service: str | None,
    settings_file: str | None,
    host: str,
    port: int,
    opa_url: str | None,
    liveness: str | None,
    leader_elect: bool,
    leader_namespace: str | None,
    identity: str | None,
    image_pull_secrets: bool,
    registry_ca_file: str | None,
    insecure_registry: tuple[str, ...],
    log_format: str,
    log_level: str,
) -> None:
    """Watch the cluster, compile, write status, serve the webhook and keep its configuration."""
    import base64
    import functools
    import logging

    # kopf imports the kubernetes client whenever it is installed (a development venv: the
    # tests use it), only to recognise that client's model classes among what handlers hand
    # it, which ours never do; the operator talks to the API server through
    # cloudtaser/kubeapi.py. Marked absent before kopf is imported (``import kubernetes``
    # then raises ImportError, which kopf expects), the operator does not carry its modules:
    # ~30 MiB of RSS once loaded (issue 17). Already imported (a caller of this function that uses it): left alone.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    from cloudtaser.heap import limit_arenas

    limit_arenas()  # before kopf, the webhook and the election start their threads
    from cloudtaser.errors import CloudtaserError
    from cloudtaser.injector import serving
    from cloudtaser.kubeapi import KubeApi
    from cloudtaser.operator import running

    logs.configure(log_format, log_level)
    logging.getLogger("kopf").setLevel(logging.WARNING)  # not a line per handled event
    # kopf serves --liveness through aiohttp, whose access log is a line per probe
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from pydantic import ValidationError

    from cloudtaser.engine.fields import validation_problems
    from cloudtaser.engine.plans import InjectorSettings
    from cloudtaser.engine.webhooks import WEBHOOK_PATH
    from cloudtaser.injector.resolving import Resolver

    ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
    client_config: dict[str, Any] = {"caBundle": ca}
    if webhook_service:
        namespace, _, rest = webhook_service.partition("/")
        name, _, service_port = rest.partition(":")
        if not namespace or not name or (service_port and not service_port.isdigit()):
            raise click.BadParameter(
                "expected NAMESPACE/NAME[:PORT]", param_hint="--webhook-service"
            )
        client_config["service"] = {
            "namespace": namespace,
            "name": name,
            "path": WEBHOOK_PATH,
            "port": int(service_port or 443),
        }
    else:
        client_config["url"] = webhook_url or f"https://{host}:{port}{WEBHOOK_PATH}"
    settings = InjectorSettings()
    if settings_file:
        try:
            settings = InjectorSettings.model_validate_json(Path(settings_file).read_text())
        except ValidationError as e:
            path, message = validation_problems(e)[0]
            raise click.ClickException(f"{settings_file}: {path}: {message}") from None
    try:  # in a pod: the service account; elsewhere: $KUBECONFIG (kopf logs in on its own)
        api = KubeApi.from_environment()
    except CloudtaserError as e:
        raise click.ClickException(str(e)) from None
    holder = serving.Holder(
        settings=settings,
        resolver=Resolver(ca_file=registry_ca_file, insecure=insecure_registry),
        pull_secrets=functools.partial(running.read_pull_secrets, api)
        if image_pull_secrets
        else None,
    )
    op = running.Operator(
        api=api, client_config=client_config, opa_url=opa_url, holder=holder, ca_file=ca_file
    )
    election = None
    if leader_elect:
        import socket

        election = (
            leader_namespace or settings.operator_namespace,
            identity or socket.gethostname(),
        )
    running.run(op, host, port, tls_cert, tls_key, liveness, election)


# --- the local test bed ---------------------------------------------------------------------


def _add_testbed_commands() -> None:
    """The local test bed's ``stack`` group, in a development checkout only: the wheel does not
    ship testbed/ (scripts/setup puts it on sys.path), and no product module imports it."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("cloudtaser.testbed") is None:
        return
    main.add_command(importlib.import_module("cloudtaser.testbed.commands").stack)


_add_testbed_commands()
