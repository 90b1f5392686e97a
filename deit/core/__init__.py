"""Foundation: the error types, atomic file writes, argument checks and figures without pyplot.

Everything above imports from here; nothing here imports the rest of the package."""
