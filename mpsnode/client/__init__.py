"""Clients of a node: the connection library (``connection``: HELLO, proven queries, a wallet that
never loses a nonce) and the FL client daemon (``daemon``: stake, join, train, submit each round).
"""
