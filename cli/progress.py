"""How `modelyard run` shows a model being pulled: a bar in a terminal, else a line per stage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from modelyard.configs.pull import human_size


class PullProgressView:
    """Show pull events (`{"modelyard_event": "pull", ...}`) on a console (stderr)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar: Progress | None = None
        self._rows: dict[str, TaskID] = {}
        self._last_status: dict[str, str] = {}

    def show(self, event: Mapping[str, Any]) -> None:
        """Show one pull event: move the model's bar, or print the stage it reached."""
        model = str(event.get("model", ""))
        status = str(event.get("status", ""))
        heading = f"{model} ({event.get('model_id', '')})"
        if self.console.is_terminal:
            self._move_bar(model, heading, status, event.get("completed"), event.get("total"))
        elif self._last_status.get(model) != status and status != "success":
            total = event.get("total")
            size = f" ({human_size(total)})" if isinstance(total, int) and total > 0 else ""
            line = f"↓ pulling {heading} into {event.get('url', '')}: {status}{size}"
            self.console.print(f"[magenta]{escape(line)}[/magenta]", soft_wrap=True)
        self._last_status[model] = status
        if status == "success":
            self.console.print(f"[green]✓ pulled {escape(heading)}[/green]", soft_wrap=True)
            row = self._rows.pop(model, None)
            if self._bar is not None and row is not None:
                self._bar.remove_task(row)
            if not self._rows:
                self.close()

    def close(self) -> None:
        """Take the bars down (a pull that failed leaves them up until the next output)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._rows.clear()

    def _move_bar(self, model: str, heading: str, status: str, completed: Any, total: Any) -> None:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[magenta]↓ {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
        description = escape(f"{heading}: {status}")
        row = self._rows.get(model)
        if row is None:
            row = self._rows[model] = self._bar.add_task(description, total=None)
        if isinstance(total, int) and total > 0:
            done = completed if isinstance(completed, int) else 0
            self._bar.update(row, description=description, total=total, completed=done)
        else:
            self._bar.update(row, description=description)
