"""The consensus layer: everything two honest nodes must compute bit for bit alike.

Canonical encoding, hashes and keys, transactions, blocks, receipts and events, the state and its
sparse-Merkle commitment, the consensus limits, the integer halves of Krum and the model, and the
state transition (``stf``). Pure functions of their inputs: no I/O, no trio, no LMDB, no clock,
no randomness. Everything above (``mpsnode.node``, the daemons, the CLI) imports it; it imports
nothing of theirs.
"""
