"""What a person sees: a 5,000-order run on a real terminal (tmux, 100 x 30), with a canary of
20 in which one order takes 12 s to answer, a 429 pause, a Ctrl-C and a resume with the same
command. The screen is captured at each stage and printed; each capture must fit the screen and
name what the run waits for. Needs tmux.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from benchmarks.__main__ import Bench, Simulator

WIDTH, HEIGHT = 100, 30


class Pane:
    """A detached tmux session of its own running one shell."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path) -> None:
        self.name = name
        exports = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in env.items() if k.startswith("MOUVONE_")
        )
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(HEIGHT),
             "-c", str(cwd), f"env {exports} bash --norc --noprofile"],
            check=True,
        )  # fmt: skip

    def type(self, text: str, enter: bool = True) -> None:
        """Keys, as typed."""
        keys = [text, "Enter"] if enter else [text]
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        """The visible screen now."""
        done = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], check=True, capture_output=True,
            text=True,
        )  # fmt: skip
        return done.stdout.rstrip("\n")

    def until(self, words: str, timeout_s: float = 120) -> str:
        """The screen once it shows ``words`` (polled)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            shown = self.screen()
            if words in shown:
                return shown
            time.sleep(0.1)
        raise AssertionError(f"the screen never showed {words!r}:\n{self.screen()}")

    def close(self) -> None:
        """End the session."""
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False)


def scenario_screen(bench: Bench, _sims: dict[float, Simulator], _orders: int) -> None:
    """5,000 orders on a 100 x 30 terminal: the screen at every stage."""
    from benchmarks.__main__ import Simulator  # noqa: PLC0415 - the suite's entry module

    if shutil.which("tmux") is None:
        bench.add("screen", "tmux is not installed", "not run")
        return
    sim = Simulator(20.0, "--stall", "12", "--rate-limit", "190", "--retry-after", "2")
    work = bench.work / "screen"
    work.mkdir()
    ids = [f"ZSC{n:010d}" for n in range(5000)]
    ids[7] = "SLO0000000007"  # in the canary: 12 s before it answers
    (work / "orders.csv").write_text("orderId\n" + "\n".join(ids) + "\n")
    env = {**sim.env(), "MOUVONE_LOG_FORMAT": "console"}
    pane = Pane(f"cancel-orders-screen-{bench.prefix('S')}", env, work)
    command = f"{shlex.quote(sys.executable)} -m worker run orders.csv --canary 20 --rate 250"
    captures: list[tuple[str, str]] = []
    try:
        pane.type(command)
        captures.append(("the prompt", pane.until("Type 'yes'")))
        pane.type("yes")
        captures.append(("the canary waits on one order", pane.until("waiting over 10 s")))
        captures.append(("sending, a limit learned", pane.until("limit ")))
        pane.type("C-c", enter=False)
        captures.append(("after Ctrl-C", pane.until("cancel-orders: interrupted")))
        pane.type("clear")
        pane.type(command)
        captures.append(("the resume's prompt", pane.until("Type 'yes'")))
        pane.type("yes")
        captures.append(("the resume's end", pane.until("cancel-orders: ", timeout_s=180)))
    finally:
        pane.close()
        sim.close()
    # what each stage must show at once, on the one screen
    wanted = {
        "the prompt": ("About to cancel", "Time:", "Type 'yes'"),
        "the canary waits on one order": ("canary ", "waiting over 10 s"),
        "sending, a limit learned": ("req/s", "limit "),
        "after Ctrl-C": ("exit 130", "pending", "next:", "cancel-orders: interrupted"),
        "the resume's prompt": ("About to cancel", "Type 'yes'"),
        "the resume's end": ("exit ", "cancelled", "cancel-orders: "),
    }
    too_tall = [
        name for name, shown in captures if not all(w in shown for w in wanted.get(name, ()))
    ]
    for name, shown in captures:
        print(f"  --- {name} ---\n" + "\n".join(f"  | {line}" for line in shown.splitlines()))
    bench.add(
        "screen: 5,000 orders, canary, slow order, Ctrl-C, resume",
        f"{len(captures)} stages captured on {WIDTH} x {HEIGHT}",
        "each fits one screen" if not too_tall else f"not on one screen: {', '.join(too_tall)}",
    )
