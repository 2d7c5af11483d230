"""Exceptions raised identically on every rank, so that no rank is left waiting."""


class ArgumentError(ValueError, TypeError):
    """An argument is invalid on at least one rank (non-contiguous, bad dtype, bad ``out``, intercommunicator...).

    With the cross-rank check on, every rank raises this with the same message naming the offending ranks.
    """


class MismatchError(ValueError):
    """Ranks disagree on an argument that must agree (count, dtype, op, algorithm).

    Every rank raises it with the same message; ``differences`` maps each differing field to ``{rank: value}``.
    """

    def __init__(self, message: str, differences=None) -> None:
        super().__init__(message)
        self.differences = differences or {}
