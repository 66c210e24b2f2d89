"""The error a reward or learned scorer raises when it cannot be built or cannot score."""


class RewardError(ValueError):
    """A reward cannot be built or cannot score these inputs; the message says why."""
