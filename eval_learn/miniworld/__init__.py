"""MiniWorld: a synthetic world of coloured shapes and a trained Stable-Diffusion-structured model of it."""
