"""The arturo-diag command line: parses options, calls the library, draws progress. No logic of its own."""
