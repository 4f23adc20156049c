"""What every `drengr` command shares: user mistakes, DRENGR_* defaults, whole-number options."""

import argparse
import os


class UsageError(Exception):
    """A mistake the user can fix; the message says how."""


def env(name: str, default: str | None = None) -> str | None:
    """The DRENGR_<NAME> environment variable: every option's default."""
    return os.environ.get("DRENGR_" + name.upper().replace("-", "_"), default)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value
