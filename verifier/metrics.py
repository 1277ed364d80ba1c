"""Prometheus metrics of the verifier, served like the sequencer's (``sequencer.metrics.serve_metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class VerifierMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.height = Gauge("mps_verifier_height", "Height of the newest verified (and committed) block",
                            registry=r)
        self.upstream_height = Gauge("mps_verifier_upstream_height", "Head height of the upstream, last seen",
                                     registry=r)
        self.lag = Gauge("mps_verifier_lag_blocks", "Upstream head minus the verified head", registry=r)
        self.blocks = Counter("mps_verifier_blocks_verified", "Blocks verified and committed since start",
                              registry=r)
        self.txs = Counter("mps_verifier_txs_verified", "Txs in blocks verified since start", registry=r)
        self.connected = Gauge("mps_verifier_connected", "1 while connected to the upstream", registry=r)
        self.reconnects = Counter("mps_verifier_reconnects", "Connections to the upstream lost or refused",
                                  registry=r)
        self.diverged = Gauge("mps_verifier_diverged", "1 once a block failed a check (the verifier stopped)",
                              registry=r)
        self.divergence_height = Gauge("mps_verifier_divergence_height",
                                       "Height of the failed block (0: none)", registry=r)
        self.precheck_seconds = Histogram("mps_verifier_precheck_seconds",
                                          "Decoding and signature checks of one batch of blocks",
                                          buckets=_TIME_BUCKETS, registry=r)
        self.execute_seconds = Histogram("mps_verifier_execute_seconds", "Re-executing a block with the STF",
                                         buckets=_TIME_BUCKETS, registry=r)
        self.commit_seconds = Histogram("mps_verifier_commit_seconds", "The LMDB write of a verified block",
                                        buckets=_TIME_BUCKETS, registry=r)
        self.connections = Gauge("mps_connections", "Open client connections (blocks served onward)",
                                 registry=r)
        self.connections_closed = Counter("mps_connections_closed", "Closed connections, by reason",
                                          ["reason"], registry=r)

    # ServerStats --------------------------------------------------------------------------------
    def connection_opened(self) -> None:
        self.connections.inc()

    def connection_closed(self, reason: str) -> None:
        if reason != "overloaded":
            self.connections.dec()
        self.connections_closed.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
