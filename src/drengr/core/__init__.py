"""The Sans-IO core: bytes and facts in, decisions out.

Nothing under ``drengr.core`` opens a socket, a file or a database, reads a
clock, the environment or randomness, or imports flask, sqlite3 or waitress
(``tests/test_core_is_sans_io.py`` proves it).
"""
