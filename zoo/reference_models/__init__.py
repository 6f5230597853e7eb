"""Model specs shipped with zoo (TOML files in this folder), and their checkpoints."""
