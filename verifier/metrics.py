"""Prometheus metrics of the verifier (served by ``mpsnode.metrics.serve_metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from mpsnode.node.metrics import TIME_BUCKETS, NodeMetrics


class VerifierMetrics(NodeMetrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.height = Gauge(
            "mps_verifier_height", "Height of the newest verified (and committed) block", registry=r
        )
        self.upstream_height = Gauge(
            "mps_verifier_upstream_height", "Head height of the upstream, last seen", registry=r
        )
        self.lag = Gauge("mps_verifier_lag_blocks", "Upstream head minus the verified head", registry=r)
        self.blocks = Counter(
            "mps_verifier_blocks_verified", "Blocks verified and committed since start", registry=r
        )
        self.txs = Counter("mps_verifier_txs_verified", "Txs in blocks verified since start", registry=r)
        self.connected = Gauge("mps_verifier_connected", "1 while connected to the upstream", registry=r)
        self.reconnects = Counter(
            "mps_verifier_reconnects", "Connections to the upstream lost or refused", registry=r
        )
        self.diverged = Gauge(
            "mps_verifier_diverged", "1 once a block failed a check (the verifier stopped)", registry=r
        )
        self.divergence_height = Gauge(
            "mps_verifier_divergence_height", "Height of the failed block (0: none)", registry=r
        )
        self.precheck_seconds = Histogram(
            "mps_verifier_precheck_seconds",
            "Decoding and signature checks of one batch of blocks",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.execute_seconds = Histogram(
            "mps_verifier_execute_seconds",
            "Re-executing a block with the STF",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "mps_verifier_commit_seconds",
            "The LMDB write of a verified block",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        # settlement (a chain with an L1)
        self.l1_head = Gauge("mps_verifier_l1_head", "The L1 head this verifier has read", registry=r)
        self.l1_waiting = Gauge(
            "mps_verifier_l1_waiting",
            "The L1 block the next block names, not yet seen on L1 (0: none)",
            registry=r,
        )
        self.l1_errors = Counter("mps_verifier_l1_errors", "L1 reads that failed", registry=r)
        self.outputs_checked = Counter(
            "mps_verifier_outputs_checked", "L1 outputs compared with this verifier's own", registry=r
        )
        self.outputs_mismatched = Counter(
            "mps_verifier_outputs_mismatched",
            "L1 outputs whose root differs from this verifier's",
            registry=r,
        )
        self.challenges = Counter(
            "mps_verifier_challenges", "Challenges this verifier sent to L1", registry=r
        )
        self.attestations = Counter(
            "mps_verifier_attestations", "Attestations this verifier sent to L1", registry=r
        )
