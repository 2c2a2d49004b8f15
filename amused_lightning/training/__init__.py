"""Training: the LightningModule around the model, its settings, objective, optimizers and resume rules."""
