"""Small shared helpers: atomic file writing, environment description, logging."""
