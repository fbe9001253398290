"""normstudy trainers: schemes, models, data, the training loop and the divergence monitor."""
