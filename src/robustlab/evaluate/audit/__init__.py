"""``robustlab audit``: the binarization test of Zimmermann et al. (NeurIPS 2022) for any model robustlab evaluates
(:mod:`robustlab.evaluate.audit.api`; docs/EVALUATION.md, "The binarization test")."""

from robustlab.evaluate.audit.api import audit_into, audit_model

__all__ = ["audit_into", "audit_model"]
