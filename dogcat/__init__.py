"""dogcat: a dog-vs-cat image classifier (MobileNetV2 fine-tuned with Keras 3)."""

__version__ = "0.1.0"
