"""Named environments: `environments.toml` and the EnvironmentManager that connects them."""
