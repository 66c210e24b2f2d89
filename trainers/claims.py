"""What a method declares about itself for the reports, as plain data: its paper's claims and the
training series that is its own objective.

The types live at the trainers layer so that each method module (``trainers/<method>.py``) states
them next to its code, as class attributes of its trainer (``claims``, ``training_objective``); the reports
(``reports/claims.py``, ``reports/objectives.py``) collect them from ``trainers.registry`` and
evaluate them, so a new method reaches the claims table and the objectives section without an edit
under ``reports/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ClaimKind = Literal["difference", "displacement", "gamma_positive", "time_ratio", "objective"]


@dataclass(frozen=True)
class PaperClaim:
    """One headline claim of a paper, checked on a run by ``reports.claims`` according to ``kind``:

    - ``difference``: eval metric ``metric`` (by name) of method ``a`` minus that of ``b`` at their
      final checkpoints, paired per video; holds when the interval is above zero (``positive``) or
      below it;
    - ``displacement``: method ``a``'s chosen-sample likelihood displacement at the final step
      (the held-out probe), above or below zero over seeds;
    - ``gamma_positive``: PG-DPO's Gamma on its own training pairs above zero in most steps of ``a``;
    - ``time_ratio``: seconds per training step of ``a`` over ``b`` no more than ``ratio`` + 20 %.

    ``methods`` are the run methods the claim needs (the base model is always needed); ``metric`` is
    also what marks a claim decided on a judge one of its methods trained on.
    """

    paper: str
    text: str
    kind: ClaimKind
    methods: tuple[str, ...]
    a: str
    b: str | None = None
    metric: str | None = None
    positive: bool = True
    ratio: float | None = None


@dataclass(frozen=True)
class Objective:
    """The logged training series (a ``train_logs`` key) that is the method's own objective or
    training reward, and which direction is good (``higher`` or ``lower``)."""

    key: str
    direction: Literal["higher", "lower"]
    label: str

    @property
    def higher(self) -> bool:
        return self.direction == "higher"
