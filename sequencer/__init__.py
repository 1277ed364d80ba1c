"""The sequencer daemon: admission, the durable mempool, block production, serving clients."""
