"""``mpsnode demo``: a real network on 127.0.0.1 training a digits classifier while clients attack."""
