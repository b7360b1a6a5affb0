"""Set-up helpers run by tools/setup.sh (and by the Makefile that calls it)."""
