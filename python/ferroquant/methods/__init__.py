"""Quantization methods: ``gptq`` (layer-streaming GPTQ), ``gptq_torch``, ``rtn``."""
