"""Serving VLM-FO1: a Gradio demo (`app`), an HTTP API (`api`) and Ray Data batch inference (`batch`).

The demo and the API answer through one `engine.InferenceEngine` (pipeline + proposers + the
micro-batcher of `batcher`), under the limits of `limits`. See docs/serving.md.
"""
