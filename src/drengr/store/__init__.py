"""Where rows go. One small interface (``base.Store``); SQLite now, PostgreSQL next."""

from .base import KeyInfo, Store, StoreError
from .sqlite import SQLiteStore

__all__ = ["KeyInfo", "SQLiteStore", "Store", "StoreError"]
