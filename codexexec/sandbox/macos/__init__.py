"""macOS enforcement: Seatbelt profiles run through sandbox-exec."""
