"""How `modelyard run` shows a task as it streams: a heading per step, tokens, what happens."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from modelyard.cli.output import post_completion_lines, review_lines
from modelyard.cli.progress import PullProgressView
from modelyard.graphs.stream import Notice, StepUpdate, StreamEvent, Token
from modelyard.state import TaskEvent


class StreamView:
    """Tokens to stdout under a heading per step; headings and events to stderr.

    A heading names the step and the model (and the attempt, for a retry, so the text of
    a failed attempt is not mistaken for the answer). Selections, fallbacks, review rounds
    and post-completion files show on stderr as they happen; a half-written line of
    tokens is ended first, so the two streams never share a line.
    """

    def __init__(self, err: Console, max_rounds: int, out: TextIO | None = None) -> None:
        self.err = err
        self.out = out or sys.stdout
        self.max_rounds = max_rounds
        self.pulls = PullProgressView(err)
        self._heading: tuple[str, str, int, int | None] | None = None
        self._line_open = False

    def show(self, event: StreamEvent) -> None:
        """Show one event."""
        if isinstance(event, Notice) and event.kind == "pull":
            self.pulls.show({"modelyard_event": "pull", **event.data})
            return
        self.pulls.close()
        if isinstance(event, Token):
            self._token(event)
        elif isinstance(event, StepUpdate):
            for history_event in event.events:
                self._event(history_event)

    def close(self) -> None:
        """End the last line of tokens and any pull progress."""
        self.pulls.close()
        self._end_line()

    def _token(self, token: Token) -> None:
        key = (token.step, token.model, token.attempt, token.post_index)
        if key != self._heading:
            retry = (
                f" · attempt {token.attempt}, the earlier output was discarded"
                if token.attempt > 1
                else ""
            )
            number = f" · step {token.post_index + 1}" if token.post_index is not None else ""
            heading = f"{token.step} · {token.model}{number}{retry}"
            self._say(f"[bold]── {escape(heading)} ──[/bold]")
            self._heading = key
        self.out.write(token.text)
        self.out.flush()
        self._line_open = not token.text.endswith("\n")

    def _event(self, event: TaskEvent) -> None:
        if event.kind == "selected":
            self._say(f"[cyan]→ {escape(f'{event.step}: {event.detail}')}[/cyan]")
        elif event.kind == "fallback":
            self._say(f"[yellow]⚠ {escape(event.detail)}[/yellow]")
            self._heading = None  # the step's next tokens come from another model
        for line in review_lines(event, self.max_rounds) + post_completion_lines(event):
            self._say(f"[magenta]{escape(line)}[/magenta]")

    def _say(self, markup: str) -> None:
        self._end_line()
        self.err.print(markup, soft_wrap=True)

    def _end_line(self) -> None:
        if self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False
