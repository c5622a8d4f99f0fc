"""Multi-step workflows over the stages (the demo now; the training pipeline later)."""
