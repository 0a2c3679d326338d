"""``citrus-v benchmark``: the published table's benchmarks, each from its released files.

registry.py (what file, which loader, which protocol), text_qa.py and reports.py (loaders for the
formats ``citrus_v.data.sources`` does not already read), protocols.py (how each is asked and
scored), suite.py (running), table.py (table.json / table.md). docs/evaluation.md documents them.
"""
