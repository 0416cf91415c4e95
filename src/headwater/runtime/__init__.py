"""Running Headwater: preparing a data directory and starting the roles."""
