"""Secret providers behind the engine's SecretProvider port."""
