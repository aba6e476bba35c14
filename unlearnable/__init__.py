"""unlearnable: make images unlearnable with bounded error-minimising noise
(Huang et al., ICLR 2021, arXiv 2101.04898), and verify what models still learn from them."""
__version__ = "0.1.0"
