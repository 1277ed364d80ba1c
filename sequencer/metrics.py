"""Prometheus metrics of the sequencer (served by ``mpsnode.metrics.serve_metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from mpsnode.node.metrics import TIME_BUCKETS, NodeMetrics


class Metrics(NodeMetrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.height = Gauge("mps_height", "Height of the newest committed block", registry=r)
        self.mempool_txs = Gauge(
            "mps_mempool_txs", "Txs pending in the mempool (admitted, not yet in a block)", registry=r
        )
        self.mempool_bytes = Gauge("mps_mempool_bytes", "Bytes of the txs pending in the mempool", registry=r)
        self.admitted = Counter("mps_txs_admitted", "Txs admitted and acked (durable)", registry=r)
        self.rejected = Counter(
            "mps_txs_rejected", "Txs refused at admission, by error code", ["code"], registry=r
        )
        self.included = Counter("mps_txs_included", "Txs included in blocks", registry=r)
        self.dropped = Counter(
            "mps_txs_dropped",
            "Admitted txs left out for good at block building, by code",
            ["code"],
            registry=r,
        )
        self.blocks = Counter("mps_blocks", "Blocks committed", registry=r)
        self.build_seconds = Histogram(
            "mps_block_build_seconds",
            "Time to build and sign a block (STF, roots)",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "mps_block_commit_seconds",
            "Time of the block's one LMDB write transaction",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.group_commit_seconds = Histogram(
            "mps_mempool_commit_seconds", "Time of one mempool group commit", buckets=TIME_BUCKETS, registry=r
        )
        self.group_commit_txs = Histogram(
            "mps_mempool_commit_txs",
            "Txs per mempool group commit",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.verify_batch_txs = Histogram(
            "mps_verify_batch_txs",
            "Signatures per verification batch",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.ack_seconds = Histogram(
            "mps_ack_seconds", "Submit to durable ack, as seen by the node", buckets=TIME_BUCKETS, registry=r
        )
        self.rounds_closed = Counter(
            "mps_rounds_closed", "Task rounds closed (void ones included)", registry=r
        )
        self.rounds_void = Counter(
            "mps_rounds_void",
            "Task rounds closed void (fewer than 2f + 3 updates: nothing aggregated)",
            registry=r,
        )
        self.slashes = Counter("mps_slashes", "Clients slashed", registry=r)
        # settlement (a chain with an L1; zero otherwise)
        self.l1_head = Gauge("mps_l1_head", "The confirmed L1 head the sequencer has read", registry=r)
        self.l1_deposits_pending = Gauge(
            "mps_l1_deposits_pending", "Deposits on L1 not yet credited on L2", registry=r
        )
        self.l1_output_height = Gauge(
            "mps_l1_output_height", "L2 height of the last output posted", registry=r
        )
        self.l1_outputs_posted = Counter(
            "mps_l1_outputs_posted", "Outputs posted to the L1 oracle", registry=r
        )
        self.l1_errors = Counter("mps_l1_errors", "L1 calls that failed, by loop", ["loop"], registry=r)
