"""The synthetic medical suite: seeded phantoms for every task (see suite.py)."""

from .suite import SuiteConfig, generate_suite, iter_texts, make_sample

__all__ = ["SuiteConfig", "generate_suite", "iter_texts", "make_sample"]
