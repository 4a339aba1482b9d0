"""Domain types, errors, the request policy, batch keys, prompt and sampler-name syntax, the backend protocol. Imports nothing else of pixelmill and no framework."""
