"""Exceptions the core raises. Their messages are meant for users: one sentence, what was
wrong and what to do."""


class IPAdapterError(Exception):
    """Bad input or a state the user can fix: the CLI prints the message and exits non-zero."""


class TrainingCancelled(Exception):
    """Raised by a run's progress hook (or the user pressing Ctrl-C) to stop training early.

    The trainer catches it, saves the adapter trained so far and a resumable checkpoint. A message, when given,
    says why (the search's pruner gives one), and the trainer logs it instead of a cancel warning.
    """


class TrainingDiverged(IPAdapterError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
