"""The ``cloudtaser stack`` commands: the local test bed up and down, the chart installed on it.

The product's CLI adds this group by name when the test bed is on sys.path (a development
checkout); the wheel does not ship it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cloudtaser import rendering
from cloudtaser.cli import OUTPUT

# --- the local real stack -------------------------------------------------------------------

STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory (default $CLOUDTASER_STATE or ~/.local/state/cloudtaser/stack).",
)


def _paths(state_dir: Path | None) -> Any:
    from cloudtaser.testbed import stacking

    return stacking.Paths(
        state=state_dir or stacking.default_state_dir(), bin=stacking.default_bin_dir()
    )


def _fail_on_cloudtaser_errors(action: Any) -> None:
    from cloudtaser.errors import CloudtaserError

    try:
        action()
    except CloudtaserError as e:
        raise click.ClickException(str(e)) from e


@click.group()
def stack() -> None:
    """The local real stack: etcd, kube-apiserver, OpenBao (mTLS), OPA and a registry on
    127.0.0.1, and a node (kubelet, containerd, runc, bridge CNI) that runs pods."""


def _echo(message: str) -> None:
    click.echo(message, err=True)


@stack.command()
@STATE_DIR
@click.option("--no-provision", is_flag=True, help="Only start processes; configure nothing.")
@click.option("--no-node", is_flag=True, help="Without the node (no pod runs; needs no root).")
def up(state_dir: Path | None, no_provision: bool, no_node: bool) -> None:
    """Start what is not running, wait until healthy, configure OpenBao, install the CRDs,
    start the node."""
    from cloudtaser.testbed import noding, provisioning, stacking

    paths = _paths(state_dir)

    def run() -> None:
        stacking.up(paths, _echo)
        if not no_provision:
            provisioning.provision(paths, _echo)
        if not no_node:
            noding.up(paths, _echo)

    _fail_on_cloudtaser_errors(run)
    _echo(
        f"stack up; state in {paths.state}. Try:\n"
        f'  eval "$(cloudtaser stack env)"\n  kubectl get sb -A\n'
        "  cloudtaser compile examples/ policies/ --pod examples/pods/postgres-pod.yaml"
    )


@stack.command()
@STATE_DIR
def down(state_dir: Path | None) -> None:
    """Stop the processes `up` started (by PID file), the node first (its pods, mounts,
    cgroups, network); data stays in the state directory."""
    from cloudtaser.testbed import stacking

    paths = _paths(state_dir)
    _fail_on_cloudtaser_errors(lambda: stacking.down(paths, _echo))


@stack.command()
@STATE_DIR
@click.option(
    "--images",
    "images_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="scripts/build-images output (NAME DIGEST PATH lines) to take "
    "the digests from; default: ask the registry for this version's tags.",
)
def install(state_dir: Path | None, images_file: Path | None) -> None:
    """helm upgrade --install the chart on the stack, with the images of the stack's registry
    (scripts/build-images --push 127.0.0.1:15000/cloudtaser), and wait for its pods."""
    from cloudtaser.testbed import installing

    paths = _paths(state_dir)
    _fail_on_cloudtaser_errors(lambda: installing.install(paths, _echo, images_file))


@stack.command()
@STATE_DIR
def uninstall(state_dir: Path | None) -> None:
    """helm uninstall the chart from the stack (its hook removes the webhook configuration)."""
    from cloudtaser.testbed import installing

    _fail_on_cloudtaser_errors(lambda: installing.uninstall(_paths(state_dir), _echo))


@stack.group()
def node() -> None:
    """The stack's node alone (the control plane keeps running): up, down, status."""


@node.command(name="up")
@STATE_DIR
def node_up(state_dir: Path | None) -> None:
    """Start the node's forwarder, containerd, controllers and kubelet; wait for Ready."""
    from cloudtaser.testbed import noding

    _fail_on_cloudtaser_errors(lambda: noding.up(_paths(state_dir), _echo))


@node.command(name="down")
@STATE_DIR
def node_down(state_dir: Path | None) -> None:
    """Drain and stop the node; remove its mounts, cgroups, bridge and host paths."""
    from cloudtaser.testbed import noding

    _fail_on_cloudtaser_errors(lambda: noding.down(_paths(state_dir), _echo))


@node.command(name="status")
@STATE_DIR
@OUTPUT
def node_status(state_dir: Path | None, output: str) -> None:
    """Health of the node's components and the Node's Ready condition; exit 1 unless all are."""
    from cloudtaser.testbed import noding

    _print_status(noding.status(_paths(state_dir)), output)


@stack.command(name="status")
@STATE_DIR
@OUTPUT
def stack_status(state_dir: Path | None, output: str) -> None:
    """Health of each component; exit 1 unless all are healthy."""
    from cloudtaser.testbed import noding, stacking

    paths = _paths(state_dir)
    _print_status(stacking.status(paths) + noding.status(paths), output)


def _print_status(rows: list[dict[str, str]], output: str) -> None:
    if output == "table":
        click.echo(
            rendering.table(
                ["component", "pid", "address", "health"], [list(r.values()) for r in rows]
            ),
            nl=False,
        )
    else:
        click.echo(rendering.dump(rows, output), nl=False)
    sys.exit(0 if all(r["health"] == "healthy" for r in rows) else 1)


@stack.command(name="env")
@STATE_DIR
def stack_env(state_dir: Path | None) -> None:
    """Print shell exports for the stack: eval "$(cloudtaser stack env)"."""
    import shlex

    from cloudtaser.testbed import stacking

    for key, value in stacking.environment(_paths(state_dir)).items():
        click.echo(f"export {key}={shlex.quote(value)}")
