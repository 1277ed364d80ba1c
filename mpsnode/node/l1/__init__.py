"""The L1 side of settlement: the contracts (Vyper sources and their compiled artifacts), the
anvil devnet node, and the JSON-RPC client that deploys, deposits, posts outputs and proves
withdrawals (docs/SETTLEMENT.md)."""
