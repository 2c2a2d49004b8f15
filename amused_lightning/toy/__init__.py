"""The toy world: pixel-art characters a CPU can learn, the scores that read them back, and the embedded `toy` model."""
