"""Helpers the tests share: real servers and the files they run (no test lives here)."""
