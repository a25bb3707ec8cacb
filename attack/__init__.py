"""attack: ciphertext-only reconstruction attacks on perceptually encrypted images, and image-quality metrics."""
