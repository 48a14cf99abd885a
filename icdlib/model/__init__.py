"""The model: backbones and their bidirectional conversion, quantization, the label-attention coder,
tokenization into segments, inference, checkpoints, MNTP, training (step 03) and explanation methods."""
