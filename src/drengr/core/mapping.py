"""Moved to ``drengr.mapping``, which picks the compiled mapper or its twin outside the core.

Kept only for ``drengr.web``'s import, until it imports ``drengr.mapping``;
nothing in the core imports this module (``core.machine.BodyParser`` is what
the core takes).
"""

from ..mapping import COMPILED, BodyMapper

__all__ = ["COMPILED", "BodyMapper"]
