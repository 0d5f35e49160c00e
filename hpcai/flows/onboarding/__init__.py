"""Getting a newcomer from nothing to a first run: `hpcai onboard` and `hpcai doctor`."""
