"""citrus-v: an open implementation of the Citrus-V medical multimodal model.

Qwen2.5-VL answers, reasons and writes reports; each ``[SEG]`` token it emits is
projected into a prompt for a SAM2 mask decoder that has its own image encoder.
"""

__version__ = "0.1.0"
