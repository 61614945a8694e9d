"""An example third-party Yap engine: what a plugin distribution looks like."""
