"""Graph passes: capture, chain finding, prepare (activations, padding) and merge."""
