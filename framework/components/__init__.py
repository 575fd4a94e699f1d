"""The interfaces a plugin implements: Model, Optimizer, Schedule, Regularizer and the dataset contract.
Built-in implementations live in the top-level `plugins/` package and register like a user's."""
