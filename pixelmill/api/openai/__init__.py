"""The OpenAI Images dialect (``/v1/images/*``), so OpenAI clients work unchanged."""
