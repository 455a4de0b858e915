"""robustlab: adversarial training and trustworthy robustness evaluation for image classifiers."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``robustlab.straight_through`` (:func:`robustlab.surrogate.straight_through`), imported on first use so that
    ``import robustlab`` stays light."""
    if name == "straight_through":
        from robustlab.surrogate import straight_through

        return straight_through
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")
