"""Foundations every other package uses: errors, typed config fields and their validation, the plugin
registries, the parameter layout, atomic files, run-folder paths, safe reading of saved configs, process lifecycle."""
