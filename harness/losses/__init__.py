"""Objective terms.  Each family lives in its own module and registers its terms in ``TERMS`` where
they are defined; importing this package imports every family so the registry is complete."""
from harness.losses.base import TERMS, Batch, Shape, Term, TermError  # noqa: F401
from harness.losses import distilbert, kd, minilm, mixkd, mobilebert, pkd, tinybert  # noqa: F401
