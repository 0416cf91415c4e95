"""The `headwater` command line: thin entry points over the package."""
