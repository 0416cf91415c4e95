"""The control plane: workspaces, sources and write keys, the admin token, declarative config."""
