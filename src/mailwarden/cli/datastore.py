"""``mailwarden datastore get|set|delete|list``: operators read and edit the script datastore.

The commands use the backend the configuration names (``[library] datastore``), through the
same code scripts call, so what ``set`` writes is what ``await datastore.get(…)`` reads on
every worker. Values are JSON on the command line and on output.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

datastore_app = typer.Typer(
    help="Read and edit the datastore policy scripts read.", no_args_is_help=True
)

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        envvar="MAILWARDEN_CONFIG",
        help="Configuration file (TOML). Default: the embedded defaults.",
    ),
]
Namespace = Annotated[str, typer.Argument(help="The namespace, e.g. 'routes'.")]
Key = Annotated[str, typer.Argument(help="The key within the namespace.")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document.")]

T = TypeVar("T")
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    err.print(escape(message), highlight=False)
    return typer.Exit(1)


def _call(config_path: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Configure the datastore as the node does, run ``work(datastore)``, close the backend."""
    from mailwarden.cli.common import load
    from mailwarden.lib.backends import BackendError
    from mailwarden.lib.datastore import Datastore, backend_for

    settings = load(config_path)
    store = Datastore(backend_for(settings.library, settings.node.data_dir))

    async def run() -> T:
        try:
            return await work(store)
        finally:
            assert store.backend is not None
            await store.backend.close()

    try:
        return asyncio.run(run())
    except BackendError as error:
        raise _fail(f"datastore unavailable: {error}") from None
    except (TypeError, ValueError) as error:
        raise _fail(str(error)) from None


def _print_json(document: object) -> None:
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


_MISSING = object()


@datastore_app.command("get")
def get(namespace: Namespace, key: Key, config: ConfigOption = None, as_json: JsonOption = False):
    """Print the value of KEY (JSON); exit 1 if there is none."""
    value = _call(config, lambda store: store.get(namespace, key, _MISSING))
    if value is _MISSING:
        raise _fail(f"no key {key!r} in namespace {namespace!r}")
    if as_json:
        _print_json({"namespace": namespace, "key": key, "value": value})
    else:
        _print_json(value)


@datastore_app.command("set")
def set_(
    namespace: Namespace,
    key: Key,
    value: Annotated[str, typer.Argument(help="JSON: 100, true, '\"text\"', '{\"a\": 1}'.")],
    config: ConfigOption = None,
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Seconds until the key reads as absent.")
    ] = None,
    string: Annotated[
        bool, typer.Option("--string", help="Store VALUE as a string, not as JSON.")
    ] = False,
) -> None:
    """Store VALUE under KEY, replacing what was there."""
    if string:
        parsed: Any = value
    else:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise _fail(
                f"VALUE {value!r} is not JSON ({error}); quote a string as '\"{value}\"' "
                "or pass --string"
            ) from None
    _call(config, lambda store: store.set(namespace, key, parsed, ttl=ttl))
    typer.echo(f"{namespace} {key}: set")


@datastore_app.command("delete")
def delete(namespace: Namespace, key: Key, config: ConfigOption = None) -> None:
    """Remove KEY; exit 1 if there was none."""
    if not _call(config, lambda store: store.delete(namespace, key)):
        raise _fail(f"no key {key!r} in namespace {namespace!r}")
    typer.echo(f"{namespace} {key}: deleted")


@datastore_app.command("list")
def list_(namespace: Namespace, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every key of NAMESPACE with its value, sorted by key."""
    items: dict[str, Any] = _call(config, lambda store: store.items(namespace))
    if as_json:
        _print_json(items)
        return
    table = Table(title=f"datastore {namespace}: {len(items)} key(s)", title_justify="left")
    table.add_column("key", overflow="fold")
    table.add_column("value", overflow="fold")
    for key, value in items.items():
        table.add_row(escape(key), escape(json.dumps(value, ensure_ascii=False)))
    _print_table(table)


def _print_table(table: Table) -> None:
    """On a terminal, to its width; otherwise (a pipe, a file) at the table's own width, so
    that a long key or value is not folded at rich's default 80 columns for a reader or a
    script to piece together again."""
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        width = Measurement.get(console, console.options.update(max_width=1 << 20), table)
        console = Console(soft_wrap=False, width=max(console.width, width.maximum))
    console.print(table)
