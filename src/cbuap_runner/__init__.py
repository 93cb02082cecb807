"""cbuap-runner: universal adversarial perturbations and the defences against them."""

__version__ = "0.1.0"
