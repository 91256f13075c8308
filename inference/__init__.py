"""leakhunter.inference."""
