"""Stage 3: the López-Pérez VAE fairness audit — the VAE, its Laplace-style uncertainty score,
and the per-FST audit."""
