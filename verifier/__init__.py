"""The verifier: follow an upstream, re-execute every block with the same STF, check every root."""
