"""The inference core: model config, preprocessing, runtime, batching. Knows nothing of HTTP."""
