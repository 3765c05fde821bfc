"""Runs killed at a chosen moment, for the tests that resume them."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from domainbed.scripts import train


@contextmanager
def killed_before_checkpoint(step: int) -> Iterator[None]:
    """Inside the block, a run dies (``KeyboardInterrupt``) when it is about to save the
    checkpoint of ``step``, after that step's record is written: the moment at which a
    resumed run must neither lose nor repeat a record. Checkpoints before it are saved."""
    real_save = train.Trainer._save_checkpoint

    def crash(self, at: int) -> None:
        if at == step:
            raise KeyboardInterrupt("simulated kill")
        real_save(self, at)

    train.Trainer._save_checkpoint = crash
    try:
        yield
    finally:
        train.Trainer._save_checkpoint = real_save
