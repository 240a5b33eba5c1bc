"""Remote environments: the environment registry client."""
