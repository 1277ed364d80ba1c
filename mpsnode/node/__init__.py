"""The node I/O layer: the LMDB store, the chain engine, the wire protocol and its server, metrics,
logging, node homes, chain exports and the shared write thread. It imports the consensus layer
and is imported by the daemons (``sequencer``, ``verifier``), the client and the CLI.
"""
