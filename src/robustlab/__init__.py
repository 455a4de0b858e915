"""robustlab: adversarial training and trustworthy robustness evaluation for image classifiers."""

__version__ = "0.1.0"
