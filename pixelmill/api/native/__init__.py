"""pixelmill's own API dialect: every engine parameter, progress as Server-Sent Events."""
