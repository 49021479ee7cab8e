"""The implement-and-review loop's state: a reviewer's verdict, and one round of the loop."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

#: Review rounds a task gets unless it says otherwise.
DEFAULT_MAX_ROUNDS = 3


class Verdict(StrEnum):
    """What a reviewer decided about the code of one round."""

    APPROVE = "approve"
    REQUEST_CHANGES = "request_changes"


class ReviewRound(BaseModel):
    """One round of the loop: the code a coder wrote, and what a reviewer said of it."""

    round: int = Field(ge=1)
    """1 for the implementation, 2 and on for each revision."""
    code: str
    """The code that was reviewed."""
    coder: str
    """The model that wrote the code."""
    reviewer: str
    """The model that reviewed it."""
    verdict: Verdict
    """Approved, or changes requested."""
    comments: list[str] = Field(default_factory=list)
    """The reviewer's comments, one specific change each; the next revision addresses them."""
    review: str = ""
    """The reviewer's whole answer, as it came."""

    @property
    def approved(self) -> bool:
        """Return whether the reviewer approved this round's code."""
        return self.verdict == Verdict.APPROVE
