"""Learning-rate schedules of the training recipe.

Authors
-------
 * speechbrain-mrl developers
"""
import math

__all__ = ["WarmupCosineLR"]


class WarmupCosineLR:
    """Linear warm-up, then cosine decay to ``final_factor * lr``, by optimiser step.

    SpeechBrain 1.1's schedulers offer warm-up with Noam, exponential or linear
    decay, and cyclic cosine, but not a single warm-up-then-cosine curve over a
    known number of steps, which is what this recipe trains with.

    Arguments
    ---------
    lr : float
        Peak learning rate.
    warmup_steps : int or None
        Steps of linear warm-up (step ``s`` gets ``lr * (s + 1) / warmup_steps``);
        None or 0: none.
    total_steps : int
        Steps of the whole run; the decay ends there.
    final_factor : float
        Learning rate at the end, as a fraction of ``lr``.

    Example
    -------
    >>> sched = WarmupCosineLR(lr=1.0, warmup_steps=10, total_steps=110, final_factor=0.1)
    >>> [round(sched(s), 3) for s in (0, 9, 10, 60, 110, 500)]
    [0.1, 1.0, 1.0, 0.55, 0.1, 0.1]
    """

    def __init__(self, lr, warmup_steps, total_steps, final_factor=0.05):
        self.lr = float(lr)
        self.warmup = max(0, int(warmup_steps or 0))
        self.total = max(1, int(total_steps))
        self.final = float(final_factor)

    def __call__(self, step):
        """Learning rate after ``step`` optimiser steps."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.lr * (self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * t)))
