"""The README and the docs site: the build, the API reference, the commands shown, the layout."""
