"""rrglib: encoder -> mapper -> LoRA LLM report generation, as in Lu et al. (arXiv 2312.01504)."""

__version__ = "0.1.0"
