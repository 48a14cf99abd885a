"""The model: backbones and their bidirectional conversion, quantization, the label-attention coder,
tokenization into segments, inference, checkpoints, MNTP, training (step 03), explanation methods, and a
trained model folder loaded to code new notes (`trained`; `icdlib.predict` is its public entry point)."""
