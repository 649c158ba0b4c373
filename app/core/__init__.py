"""What every feature uses."""
