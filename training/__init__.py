"""leakhunter.training."""
