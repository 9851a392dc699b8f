"""Jinja templates of the cards ravel-bench writes (installed as ``ravel_bench.hub_cards``)."""
