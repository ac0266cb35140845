"""The one-line state badge at the top of each ``%%stage`` cell's output.

Shown with a ``display_id`` when the cell runs, then replaced in place (``update_display``)
whenever the stage's state changes, whatever changed it: another cell, a panel button, a
changed global. Plain display updates: no frontend extension is needed.
"""
from __future__ import annotations

import html

from pipelite import StageStatus
from pipelite.present import STATE_COLOURS

__all__ = ["Badge"]

REASON_LIMIT = 120  # characters of the reason shown on the badge


class Badge:
    """A stage's state and, when it is not fresh, the first reason, in one line."""

    def __init__(self, stage: str, state: str, reason: str = "", note: str = "",
                 body: dict | None = None):
        self.stage = stage
        self.state = state
        self.reason = reason if len(reason) <= REASON_LIMIT else reason[:REASON_LIMIT - 1] + "…"
        self.note = note  # e.g. "output of the run from the panel at 10:32:05"
        self.body = body  # that run's output (see slots.composite), shown under the line

    @classmethod
    def of(cls, status: StageStatus, note: str = "", body: dict | None = None) -> "Badge":
        if status.state == "failed":
            reason = status.error or (status.reasons[0] if status.reasons else "")
        elif status.state in ("fresh", "running"):
            reason = ""
        else:
            reason = status.reasons[0] if status.reasons else ""
        return cls(status.name, status.state, reason, note, body)

    @property
    def text(self) -> str:
        return f"{self.state}: {self.reason}" if self.reason else self.state

    def __repr__(self) -> str:
        line = f"[pipelite] {self.stage}: {self.text}"
        if self.note:
            line += f"\n[pipelite] {self.note}"
        if self.body and self.body.get("text/plain"):
            line += "\n" + self.body["text/plain"]
        return line

    def _repr_html_(self) -> str:
        fill, stroke = STATE_COLOURS.get(self.state, ("#e8e8e8", "#616161"))
        reason = (f' <span class="pipelite-cell-badge-reason">{html.escape(self.reason)}</span>'
                  if self.reason else "")
        note = (f' <span class="pipelite-cell-badge-note">· '
                f"{html.escape(self.note)}</span>" if self.note else "")
        body = (f'<div class="pipelite-cell-run-output">{self.body.get("text/html", "")}</div>'
                if self.body else "")
        return (
            f'<div class="pipelite-cell-badge pipelite-cell-badge-{self.state}" '
            f'data-stage="{html.escape(self.stage)}" data-state="{self.state}" '
            f'style="font-family: var(--jp-ui-font-family, sans-serif); font-size: 12px; '
            f'color: var(--jp-ui-font-color1, #1a1a1a)">'
            f'<span class="pipelite-cell-badge-state" style="background: {fill}; color: #1a1a1a; '
            f'border: 1px solid {stroke}; border-radius: 3px; padding: 0 6px">'
            f"{self.state}</span> <code>{html.escape(self.stage)}</code>{reason}{note}</div>"
            f"{body}"
        )
