"""The command-line interface: a thin layer that parses arguments, calls the library, formats results."""
