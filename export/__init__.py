"""leakhunter.export."""
