"""vlmfo1: VLM-FO1 (fine-grained perception by region-token retrieval) on today's transformers."""
__version__ = "0.1.0"
