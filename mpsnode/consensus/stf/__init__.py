"""The state transition function: blocks in, receipts, events and a new state root out.

No I/O, no clock, no environment, no randomness: time comes from the block header, ids from
counters or hashes, storage and the state tree are injected. The entry points are in
``transition``: ``state_transition`` (verify and apply one block; every node's path) and
``build_block`` (the sequencer's: the same steps, with the header computed instead of checked).
One module per tx kind holds its ``process_*`` step: ``transfer``, ``stake``, ``task``, ``update``;
``round`` closes rounds.
"""
