"""Reliability suite: the fault matrix of tests/README.md, over real sockets on 127.0.0.1."""
