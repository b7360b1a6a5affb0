"""What every stage needs: device choice, distributed helpers, errors, atomic file I/O, command-line pieces."""
