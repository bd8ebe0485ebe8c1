"""smtpping's module structure: no import circle, every module importable on its own,
one driver-neutral Timekeeper, named plain-transaction steps."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path
from time import monotonic

import pytest

from mailwarden.tools.smtpping.message import Payload
from mailwarden.tools.smtpping.plain import plan_steps
from mailwarden.tools.smtpping.result import SessionPlan
from mailwarden.tools.smtpping.stats import RunStats
from mailwarden.tools.smtpping.timekeeper import Timekeeper

PACKAGE = "mailwarden.tools.smtpping"
SOURCE = Path(__file__).resolve().parents[2] / "src" / "mailwarden" / "tools" / "smtpping"
MODULES = sorted(path.stem for path in SOURCE.glob("*.py") if path.stem != "__init__")


def imported_siblings(module: str) -> set[str]:
    """Every smtpping module this one imports anywhere: at the top, inside functions,
    under TYPE_CHECKING. A circle through any of them is still a circle to a reader."""
    tree = ast.parse((SOURCE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
            elif node.level == 0 and (node.module or "").startswith(PACKAGE + "."):
                names = [node.module.removeprefix(PACKAGE + ".")]  # type: ignore[union-attr]
            else:
                continue
        elif isinstance(node, ast.Import):
            names = [
                alias.name.removeprefix(PACKAGE + ".")
                for alias in node.names
                if alias.name.startswith(PACKAGE + ".")
            ]
        else:
            continue
        found.update(name.split(".")[0] for name in names)
    return found & set(MODULES)


def test_the_smtpping_modules_import_each_other_without_a_circle() -> None:
    graph = {module: imported_siblings(module) for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circle = [*path[path.index(module) :], module]
            pytest.fail("import circle: " + " -> ".join(circle))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])
    assert graph["engine"] and graph["runner"]  # the walk did see imports


@pytest.mark.parametrize("module", MODULES)
def test_each_smtpping_module_imports_alone(module: str) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}.{module}"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SOURCE.parents[2])},
        check=False,
    )
    assert ran.returncode == 0, ran.stderr


def plan(chunking: bool, rcpts: int) -> SessionPlan:
    return SessionPlan(
        helo_command=b"EHLO h\r\n",
        helo_label="EHLO",
        mail_command=b"MAIL FROM: <>\r\n",
        rcpt_commands=tuple(b"RCPT TO: <r%d@x>\r\n" % n for n in range(rcpts)),
        payload=Payload(b"BDAT 1 LAST\r\nx" if chunking else b"x\r\n.\r\n", chunking),
        timeout_s=1.0,
    )


def test_plain_steps_are_named() -> None:
    steps = plan_steps(plan(chunking=False, rcpts=2))
    assert [step.label for step in steps] == [
        "BANNER",
        "EHLO",
        "MAIL FROM",
        "RCPT TO",
        "RCPT TO",
        "DATA",
        "EOM",
        "QUIT",
    ]
    assert [step.marks for step in steps] == [1, 1, 1, 0, 1, 1, 1, 1]
    assert [(step.low, step.high) for step in steps][-3:] == [(300, 399), (1, 999), (1, 999)]
    assert [step.is_eom for step in steps].index(True) == 6
    assert steps[-1].command is None and steps[-2].command == b"QUIT\r\n"
    bdat = plan_steps(plan(chunking=True, rcpts=1))
    # No DATA round trip with BDAT: the last RCPT also takes the "data" mark.
    assert [(step.label, step.marks) for step in bdat][3:5] == [("RCPT TO", 2), ("EOM", 1)]


def clock(**settings: object) -> tuple[Timekeeper, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Timekeeper(RunStats(), out=out, err=err, **settings), out, err  # type: ignore[arg-type]


def test_the_stop_wakes_every_pause_on_the_next_turn() -> None:
    keeper, _, _ = clock()
    keeper.begin()
    keeper.pause(60.0, "worker 1")
    keeper.pause(0.0, "worker 2")
    assert keeper.run_due(monotonic()) == ["worker 2"]
    assert keeper.deadline > monotonic() + 50  # worker 1 waits out its -w
    keeper.stop()
    assert keeper.stopping and keeper.deadline <= monotonic()
    assert keeper.run_due(monotonic()) == ["worker 1"]


def test_duration_stops_and_ticks_count_what_completed() -> None:
    ticks: list[int] = []
    keeper, out, _ = clock(tick_sink=ticks.append, tick_interval=0.1, duration_s=0.25)
    keeper.begin()
    assert ticks == [0]  # second 0 at once, as 1.1 prints it
    start = keeper.started
    keeper.stats.completed = 3
    keeper.run_due(start + 0.1)
    keeper.stats.completed = 5
    keeper.run_due(start + 0.2)
    assert not keeper.stopping
    keeper.run_due(start + 0.25)
    assert keeper.stopping
    keeper.stats.completed = 6
    keeper.end()  # the last partial tick still reaches the parent
    assert ticks == [0, 3, 2, 1]
    assert out.getvalue() == ""


def test_rate_ticks_print_and_progress_is_drawn_then_erased() -> None:
    keeper, out, err = clock(ticks=True, progress=True)
    keeper.begin()
    keeper.stats.completed = 4
    keeper.run_due(keeper.started + 1.0)  # the first tick and the first progress line
    keeper.end()
    assert out.getvalue() == "0\n4\n"
    assert err.getvalue().startswith("\r\x1b[K4 sent, 0 failed, ")
    assert err.getvalue().endswith(" s\r\x1b[K")
