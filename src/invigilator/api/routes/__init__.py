"""Route modules: staff, candidate, health."""
