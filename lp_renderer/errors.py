"""Exceptions for problems a user can fix (bad input, missing weights, no face).

Command-line front ends catch :class:`InputError` and print its message as one line;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input a user can fix: the message says what is wrong and what to do."""


class WeightsError(InputError):
    """Weights are missing, unsafe, or do not match the network they are loaded into."""


class NoFaceError(InputError):
    """No face was found where one is required."""
